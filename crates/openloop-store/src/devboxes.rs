//! Devbox records. The sandboxes themselves live in `openloop-sandbox`.

use crate::{now_ms, Result, Store, StoreError};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DevboxRecord {
    pub id: String,
    pub name: Option<String>,
    /// `provisioning`, `initializing`, `running`, `shutdown` or `failure`.
    pub status: String,
    /// The invocation that created it, if any; it is shut down when that run ends.
    pub invocation_id: Option<String>,
    pub failure_reason: Option<String>,
    /// JSON of the create request (environment variable names, limits, ...).
    pub spec: String,
    pub created_at_ms: i64,
    pub ended_at_ms: Option<i64>,
}

const SELECT: &str = "SELECT id, name, status, invocation_id, failure_reason, spec, created_at_ms, ended_at_ms FROM devboxes";

impl Store {
    pub async fn insert_devbox(&self, d: &DevboxRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO devboxes (id, name, status, invocation_id, spec, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&d.id)
        .bind(&d.name)
        .bind(&d.status)
        .bind(&d.invocation_id)
        .bind(&d.spec)
        .bind(d.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_devbox(&self, id: &str) -> Result<DevboxRecord> {
        sqlx::query_as::<_, DevboxRecord>(&format!("{SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("devbox '{id}'")))
    }

    /// Newest first, optionally by status, paged by `starting_after` id.
    pub async fn list_devboxes(
        &self,
        status: Option<&str>,
        starting_after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DevboxRecord>> {
        Ok(sqlx::query_as::<_, DevboxRecord>(&format!(
            "{SELECT} WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(status)
        .bind(starting_after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn devbox_ids_of_invocation(&self, invocation_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM devboxes WHERE invocation_id = $1 AND status NOT IN ('shutdown', 'failure')",
        )
        .bind(invocation_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    pub async fn set_devbox_status(
        &self,
        id: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let ended = matches!(status, "shutdown" | "failure").then(now_ms);
        sqlx::query(
            "UPDATE devboxes SET status = $1, failure_reason = COALESCE($2, failure_reason), ended_at_ms = COALESCE($3, ended_at_ms) WHERE id = $4",
        )
        .bind(status)
        .bind(reason)
        .bind(ended)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Devboxes that were live when the server stopped: after a restart they are gone.
    pub async fn shut_down_live_devboxes(&self, reason: &str) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE devboxes SET status = 'shutdown', failure_reason = $1, ended_at_ms = $2 WHERE status NOT IN ('shutdown', 'failure')",
        )
        .bind(reason)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}
