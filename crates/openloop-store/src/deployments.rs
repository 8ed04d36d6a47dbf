//! Projects, deployments and their build logs.

use crate::{new_id, now_ms, Result, Store, StoreError};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Deployment {
    pub id: String,
    pub project_name: String,
    pub source: String,
    pub git_ref: Option<String>,
    /// `queued`, `building`, `deployed` or `failed`.
    pub status: String,
    pub failure_reason: Option<String>,
    /// JSON manifest of the functions, once built.
    #[serde(skip)]
    pub manifest: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    /// The node that built it (cluster mode: other nodes build it again, lazily).
    pub node_id: Option<String>,
    /// Content hash of its source archive in `deployment_sources` (cluster mode only).
    #[serde(skip)]
    pub source_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LogLine {
    pub seq: i64,
    pub ts_ms: i64,
    pub line: String,
}

impl Store {
    pub async fn create_deployment(
        &self,
        project: &str,
        source: &str,
        git_ref: Option<&str>,
        node_id: &str,
    ) -> Result<Deployment> {
        let d = Deployment {
            id: new_id("dpl"),
            project_name: project.to_string(),
            source: source.to_string(),
            git_ref: git_ref.map(str::to_string),
            status: "queued".into(),
            failure_reason: None,
            manifest: None,
            created_at_ms: now_ms(),
            started_at_ms: None,
            ended_at_ms: None,
            node_id: Some(node_id.to_string()),
            source_hash: None,
        };
        sqlx::query(
            "INSERT INTO deployments (id, project_name, source, git_ref, status, created_at_ms, node_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&d.id)
        .bind(&d.project_name)
        .bind(&d.source)
        .bind(&d.git_ref)
        .bind(&d.status)
        .bind(d.created_at_ms)
        .bind(&d.node_id)
        .execute(&self.pool)
        .await?;
        Ok(d)
    }

    pub async fn get_deployment(&self, id: &str) -> Result<Deployment> {
        sqlx::query_as::<_, Deployment>(
            "SELECT id, project_name, source, git_ref, status, failure_reason, manifest, created_at_ms, started_at_ms, ended_at_ms, node_id, source_hash FROM deployments WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deployment '{id}'")))
    }

    /// Newest first; optionally one project's.
    pub async fn list_deployments(
        &self,
        project: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Deployment>> {
        Ok(sqlx::query_as::<_, Deployment>(
            "SELECT id, project_name, source, git_ref, status, failure_reason, manifest, created_at_ms, started_at_ms, ended_at_ms, node_id, source_hash FROM deployments WHERE ($1 IS NULL OR project_name = $1) ORDER BY created_at_ms DESC, id DESC LIMIT $2",
        )
        .bind(project)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One page of every deployment, newest first, before the id `before` (keyset paging).
    pub async fn page_deployments(
        &self,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Deployment>> {
        Ok(sqlx::query_as::<_, Deployment>(
            "SELECT id, project_name, source, git_ref, status, failure_reason, manifest, created_at_ms, started_at_ms, ended_at_ms, node_id, source_hash FROM deployments WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn mark_deployment_building(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE deployments SET status = 'building', started_at_ms = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn mark_deployment_failed(&self, id: &str, reason: &str) -> Result<()> {
        sqlx::query("UPDATE deployments SET status = 'failed', failure_reason = $1, ended_at_ms = $2 WHERE id = $3")
            .bind(reason)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Record success and make this the project's active deployment, in one transaction.
    /// `source_hash` names the source archive other nodes build from (cluster mode).
    pub async fn mark_deployment_deployed(
        &self,
        id: &str,
        project: &str,
        manifest: &str,
        source_hash: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        sqlx::query("UPDATE deployments SET status = 'deployed', manifest = $1, ended_at_ms = $2, source_hash = $3 WHERE id = $4")
            .bind(manifest)
            .bind(now)
            .bind(source_hash)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let updated = sqlx::query("UPDATE projects SET active_deployment_id = $1 WHERE name = $2")
            .bind(id)
            .bind(project)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            sqlx::query("INSERT INTO projects (name, active_deployment_id, created_at_ms) VALUES ($1, $2, $3)")
                .bind(project)
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deployments this node (`node_id`) never finished building (it stopped during the
    /// build); other nodes' builds are theirs to finish.
    /// `node_id` `None`: every node's (a single node on SQLite).
    pub async fn fail_unfinished_deployments(
        &self,
        reason: &str,
        node_id: Option<&str>,
    ) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE deployments SET status = 'failed', failure_reason = $1, ended_at_ms = $2 WHERE status IN ('queued', 'building') AND ($3 IS NULL OR node_id = $3 OR node_id IS NULL)",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(node_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// The deployment that serves a project, if it has one.
    pub async fn active_deployment(&self, project: &str) -> Result<Option<Deployment>> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT active_deployment_id FROM projects WHERE name = $1")
                .bind(project)
                .fetch_optional(&self.pool)
                .await?;
        match row.and_then(|r| r.0) {
            Some(id) => Ok(Some(self.get_deployment(&id).await?)),
            None => Ok(None),
        }
    }

    /// All projects' active deployments.
    pub async fn active_deployments(&self) -> Result<Vec<Deployment>> {
        Ok(sqlx::query_as::<_, Deployment>(
            "SELECT d.id, d.project_name, d.source, d.git_ref, d.status, d.failure_reason, d.manifest, d.created_at_ms, d.started_at_ms, d.ended_at_ms, d.node_id, d.source_hash FROM deployments d JOIN projects p ON p.active_deployment_id = d.id ORDER BY p.name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn append_deployment_log(&self, id: &str, seq: i64, line: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO deployment_logs (deployment_id, seq, ts_ms, line) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(seq)
        .bind(now_ms())
        .bind(line)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn deployment_logs(
        &self,
        id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<LogLine>> {
        Ok(sqlx::query_as::<_, LogLine>(
            "SELECT seq, ts_ms, line FROM deployment_logs WHERE deployment_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

impl Store {
    /// Keep a deployment's source archive under its content hash (once per content).
    pub async fn put_deployment_source(&self, hash: &str, archive: &[u8]) -> Result<()> {
        sqlx::query(
            "INSERT INTO deployment_sources (hash, size_bytes, archive, created_at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash)
        .bind(archive.len() as i64)
        .bind(archive)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A source archive by its content hash.
    pub async fn deployment_source(&self, hash: &str) -> Result<Vec<u8>> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT archive FROM deployment_sources WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| r.0)
            .ok_or_else(|| StoreError::NotFound(format!("source archive '{hash}'")))
    }
}
