//! Disk snapshot records. Their files live in the data directory (`openloop-sandbox`'s
//! `snapshot` module); a devbox started from one names it in `devboxes.snapshot_id`.

use crate::{Result, Store, StoreError};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SnapshotRecord {
    pub id: String,
    /// Who may see and use it: `key:<api key id>` or `run:<invocation id>`.
    pub owner: String,
    pub source_devbox_id: String,
    pub name: Option<String>,
    pub commit_message: Option<String>,
    /// A JSON object of strings.
    pub metadata: String,
    /// `in_progress`, `complete`, `error` or `deleted`.
    pub status: String,
    pub error_message: Option<String>,
    pub size_bytes: Option<i64>,
    pub created_at_ms: i64,
}

/// Which snapshots a page lists (besides their owner, always given).
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter<'a> {
    pub devbox_id: Option<&'a str>,
    /// Only ids before this one (ids are time-ordered; pages go newest first).
    pub starting_after: Option<&'a str>,
}

impl Store {
    pub async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO disk_snapshots (id, owner, source_devbox_id, name, commit_message, metadata, status, error_message, size_bytes, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&s.id)
        .bind(&s.owner)
        .bind(&s.source_devbox_id)
        .bind(&s.name)
        .bind(&s.commit_message)
        .bind(&s.metadata)
        .bind(&s.status)
        .bind(&s.error_message)
        .bind(s.size_bytes)
        .bind(s.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A snapshot of `owner` (also a deleted one: its status says so).
    pub async fn get_snapshot(&self, id: &str, owner: &str) -> Result<SnapshotRecord> {
        sqlx::query_as::<_, SnapshotRecord>(
            "SELECT id, owner, source_devbox_id, name, commit_message, metadata, status, error_message, size_bytes, created_at_ms FROM disk_snapshots WHERE id = $1 AND owner = $2",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("disk snapshot '{id}'")))
    }

    /// Snapshots of `owner` that are not deleted, newest first, at most `limit`.
    pub async fn list_snapshots(
        &self,
        owner: &str,
        filter: &SnapshotFilter<'_>,
        limit: i64,
    ) -> Result<Vec<SnapshotRecord>> {
        Ok(sqlx::query_as::<_, SnapshotRecord>(
            "SELECT id, owner, source_devbox_id, name, commit_message, metadata, status, error_message, size_bytes, created_at_ms FROM disk_snapshots WHERE owner = $1 AND status <> 'deleted' AND ($2 IS NULL OR source_devbox_id = $2) AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(owner)
        .bind(filter.devbox_id)
        .bind(filter.starting_after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many snapshots [`Store::list_snapshots`] would list without paging.
    pub async fn count_snapshots(&self, owner: &str, devbox_id: Option<&str>) -> Result<i64> {
        let row: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM disk_snapshots WHERE owner = $1 AND status <> 'deleted' AND ($2 IS NULL OR source_devbox_id = $2)",
        )
        .bind(owner)
        .bind(devbox_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0)
    }

    /// Replace the name, commit message and metadata of a snapshot that is not deleted
    /// (a `None` leaves that field as it is).
    pub async fn update_snapshot(
        &self,
        id: &str,
        owner: &str,
        name: Option<&str>,
        commit_message: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<()> {
        let r = sqlx::query(
            "UPDATE disk_snapshots SET name = COALESCE($1, name), commit_message = COALESCE($2, commit_message), metadata = COALESCE($3, metadata) WHERE id = $4 AND owner = $5 AND status <> 'deleted'",
        )
        .bind(name)
        .bind(commit_message)
        .bind(metadata)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("disk snapshot '{id}'")));
        }
        Ok(())
    }

    /// Record how a snapshot's copy ended (`complete` with its size, or `error`), unless it
    /// was deleted meanwhile.
    pub async fn finish_snapshot(
        &self,
        id: &str,
        status: &str,
        size_bytes: Option<i64>,
        error_message: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE disk_snapshots SET status = $1, size_bytes = $2, error_message = $3 WHERE id = $4 AND status = 'in_progress'",
        )
        .bind(status)
        .bind(size_bytes)
        .bind(error_message)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Mark a snapshot deleted; false when it is not `owner`'s, already deleted, or still
    /// being copied.
    pub async fn mark_snapshot_deleted(&self, id: &str, owner: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE disk_snapshots SET status = 'deleted' WHERE id = $1 AND owner = $2 AND status IN ('complete', 'error')",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Snapshots whose copy a stopped server left unfinished: they become `error`. Returns
    /// their ids (their partial files are to be removed).
    pub async fn fail_unfinished_snapshots(&self, message: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM disk_snapshots WHERE status = 'in_progress'")
                .fetch_all(&self.pool)
                .await?;
        sqlx::query(
            "UPDATE disk_snapshots SET status = 'error', error_message = $1 WHERE status = 'in_progress'",
        )
        .bind(message)
        .execute(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Ids of every snapshot whose files should exist (`complete`).
    pub async fn complete_snapshot_ids(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM disk_snapshots WHERE status = 'complete'")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}
