//! Blueprint records and their build logs. A blueprint's layer lives in the data directory
//! (`<data>/blueprints/<content_hash>`, shared by blueprints of identical content); a devbox
//! started from one names it in `devboxes.blueprint_id`.

use crate::{Result, Store, StoreError};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BlueprintRecord {
    pub id: String,
    /// Who may see and use it: `key:<api key id>`.
    pub owner: String,
    pub name: String,
    /// The create request as given, JSON.
    pub parameters: String,
    pub base_blueprint_id: Option<String>,
    /// Names its layer; identical content (and owner) gives the same hash.
    pub content_hash: String,
    /// `queued`, `building`, `build_complete` or `failed`.
    pub status: String,
    /// `created` or `deleted`.
    pub state: String,
    pub failure_reason: Option<String>,
    /// What a devbox from it starts with (ENV, WORKDIR, USER), JSON.
    pub image: String,
    /// A JSON object of strings.
    pub metadata: String,
    pub created_at_ms: i64,
    pub build_finish_time_ms: Option<i64>,
}

/// One line of a build log.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BlueprintLogLine {
    pub level: String,
    pub message: String,
    pub timestamp_ms: i64,
}

/// Which blueprints a page lists (besides their owner, always given; deleted ones never).
#[derive(Debug, Clone, Default)]
pub struct BlueprintFilter<'a> {
    pub name: Option<&'a str>,
    pub status: Option<&'a str>,
    /// Only ids before this one (ids are time-ordered; pages go newest first).
    pub starting_after: Option<&'a str>,
}

impl Store {
    pub async fn insert_blueprint(&self, b: &BlueprintRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO blueprints (id, owner, name, parameters, base_blueprint_id, content_hash, status, state, failure_reason, image, metadata, created_at_ms, build_finish_time_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&b.id)
        .bind(&b.owner)
        .bind(&b.name)
        .bind(&b.parameters)
        .bind(&b.base_blueprint_id)
        .bind(&b.content_hash)
        .bind(&b.status)
        .bind(&b.state)
        .bind(&b.failure_reason)
        .bind(&b.image)
        .bind(&b.metadata)
        .bind(b.created_at_ms)
        .bind(b.build_finish_time_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A blueprint of `owner` (also a deleted one: its state says so).
    pub async fn get_blueprint(&self, id: &str, owner: &str) -> Result<BlueprintRecord> {
        sqlx::query_as::<_, BlueprintRecord>(
            "SELECT id, owner, name, parameters, base_blueprint_id, content_hash, status, state, failure_reason, image, metadata, created_at_ms, build_finish_time_ms FROM blueprints WHERE id = $1 AND owner = $2",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("blueprint '{id}'")))
    }

    /// The newest successfully built blueprint of `owner` named `name`.
    pub async fn latest_built_blueprint(
        &self,
        name: &str,
        owner: &str,
    ) -> Result<Option<BlueprintRecord>> {
        Ok(sqlx::query_as::<_, BlueprintRecord>(
            "SELECT id, owner, name, parameters, base_blueprint_id, content_hash, status, state, failure_reason, image, metadata, created_at_ms, build_finish_time_ms FROM blueprints WHERE owner = $1 AND name = $2 AND status = 'build_complete' AND state = 'created' ORDER BY id DESC LIMIT 1",
        )
        .bind(owner)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Blueprints of `owner` that are not deleted, newest first, at most `limit`.
    pub async fn list_blueprints(
        &self,
        owner: &str,
        filter: &BlueprintFilter<'_>,
        limit: i64,
    ) -> Result<Vec<BlueprintRecord>> {
        Ok(sqlx::query_as::<_, BlueprintRecord>(
            "SELECT id, owner, name, parameters, base_blueprint_id, content_hash, status, state, failure_reason, image, metadata, created_at_ms, build_finish_time_ms FROM blueprints WHERE owner = $1 AND state = 'created' AND ($2 IS NULL OR name = $2) AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $5",
        )
        .bind(owner)
        .bind(filter.name)
        .bind(filter.status)
        .bind(filter.starting_after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many blueprints [`Store::list_blueprints`] would list without paging.
    pub async fn count_blueprints(&self, owner: &str, filter: &BlueprintFilter<'_>) -> Result<i64> {
        let row: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM blueprints WHERE owner = $1 AND state = 'created' AND ($2 IS NULL OR name = $2) AND ($3 IS NULL OR status = $3)",
        )
        .bind(owner)
        .bind(filter.name)
        .bind(filter.status)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0)
    }

    /// Move a build on (`building`), or end it (`build_complete`, `failed` with a reason).
    pub async fn set_blueprint_status(
        &self,
        id: &str,
        status: &str,
        failure_reason: Option<&str>,
        finished_at_ms: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE blueprints SET status = $1, failure_reason = $2, build_finish_time_ms = $3 WHERE id = $4",
        )
        .bind(status)
        .bind(failure_reason)
        .bind(finished_at_ms)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Mark a blueprint deleted; false when it is not `owner`'s or already deleted.
    pub async fn mark_blueprint_deleted(&self, id: &str, owner: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE blueprints SET state = 'deleted' WHERE id = $1 AND owner = $2 AND state = 'created'",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// How many blueprints that are not deleted use the layer `content_hash`.
    pub async fn blueprint_layer_users(&self, content_hash: &str) -> Result<i64> {
        let row: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM blueprints WHERE content_hash = $1 AND state = 'created'",
        )
        .bind(content_hash)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0)
    }

    /// How many of `owner`'s builds have not ended (`queued` or `building`).
    pub async fn unfinished_blueprints(&self, owner: &str) -> Result<i64> {
        let row: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM blueprints WHERE owner = $1 AND status IN ('queued', 'building')",
        )
        .bind(owner)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0)
    }

    /// How many builds that have not ended are `FROM` blueprint `id` (their sandboxes stack
    /// its layer, and they copy its files).
    pub async fn builds_from_blueprint(&self, id: &str) -> Result<i64> {
        let row: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM blueprints WHERE base_blueprint_id = $1 AND status IN ('queued', 'building')",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0)
    }

    /// Builds a stopped server left unfinished: they fail. Returns their ids.
    pub async fn fail_unfinished_blueprints(&self, now_ms: i64) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM blueprints WHERE status IN ('queued', 'building')")
                .fetch_all(&self.pool)
                .await?;
        sqlx::query(
            "UPDATE blueprints SET status = 'failed', failure_reason = 'build_failed', build_finish_time_ms = $1 WHERE status IN ('queued', 'building')",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Content hashes whose layers should exist (a built blueprint that is not deleted).
    pub async fn live_blueprint_layers(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT content_hash FROM blueprints WHERE status = 'build_complete' AND state = 'created'",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Append lines to a build log, numbered after the `first_seq - 1` already there.
    pub async fn append_blueprint_logs(
        &self,
        blueprint_id: &str,
        first_seq: i64,
        lines: &[BlueprintLogLine],
    ) -> Result<()> {
        for (i, l) in lines.iter().enumerate() {
            sqlx::query(
                "INSERT INTO blueprint_logs (blueprint_id, seq, level, message, timestamp_ms) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(blueprint_id)
            .bind(first_seq + i as i64)
            .bind(&l.level)
            .bind(&l.message)
            .bind(l.timestamp_ms)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// A blueprint's build log, oldest line first.
    pub async fn blueprint_logs(&self, blueprint_id: &str) -> Result<Vec<BlueprintLogLine>> {
        Ok(sqlx::query_as::<_, BlueprintLogLine>(
            "SELECT level, message, timestamp_ms FROM blueprint_logs WHERE blueprint_id = $1 ORDER BY seq",
        )
        .bind(blueprint_id)
        .fetch_all(&self.pool)
        .await?)
    }
}
