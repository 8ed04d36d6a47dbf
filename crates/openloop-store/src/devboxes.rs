//! Devbox records. The sandboxes themselves live in `openloop-sandbox`.

use crate::{now_ms, Result, Store, StoreError};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DevboxRecord {
    pub id: String,
    pub name: Option<String>,
    /// `provisioning`, `initializing`, `running`, `suspending`, `suspended`, `resuming`,
    /// `shutdown` or `failure`.
    pub status: String,
    /// The invocation that created it, if any; it is shut down when that run ends.
    pub invocation_id: Option<String>,
    /// The API key that created it, when a key holder did (not a run).
    pub key_id: Option<String>,
    /// Runloop's failure code: `out_of_memory`, `out_of_disk`, `execution_failed`, `health_check_failed`.
    pub failure_reason: Option<String>,
    /// `api_shutdown`, `keep_alive_timeout`, `entrypoint_exit`, `idle` or `ttl_expired`.
    pub shutdown_reason: Option<String>,
    /// Human-readable detail for the last status change.
    pub status_message: Option<String>,
    /// JSON of the create request (environment variable names, limits, ...).
    pub spec: String,
    pub created_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// The disk snapshot it was started from, if any.
    pub snapshot_id: Option<String>,
    /// The node it lives on.
    pub node_id: Option<String>,
    /// The blueprint it was started from, if any.
    pub blueprint_id: Option<String>,
}

const SELECT: &str = "SELECT id, name, status, invocation_id, key_id, failure_reason, shutdown_reason, status_message, spec, created_at_ms, ended_at_ms, snapshot_id, node_id, blueprint_id FROM devboxes";

/// One entry of a devbox's status history.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Transition {
    pub status: String,
    pub transition_time_ms: i64,
    pub failure_reason: Option<String>,
}

/// A status change.
#[derive(Debug, Clone, Default)]
pub struct StatusChange<'a> {
    pub status: &'a str,
    pub failure_reason: Option<&'a str>,
    pub shutdown_reason: Option<&'a str>,
    pub message: Option<&'a str>,
}

impl Store {
    pub async fn insert_devbox(&self, d: &DevboxRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO devboxes (id, name, status, invocation_id, key_id, spec, created_at_ms, snapshot_id, node_id, blueprint_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&d.id)
        .bind(&d.name)
        .bind(&d.status)
        .bind(&d.invocation_id)
        .bind(&d.key_id)
        .bind(&d.spec)
        .bind(d.created_at_ms)
        .bind(&d.snapshot_id)
        .bind(&d.node_id)
        .bind(&d.blueprint_id)
        .execute(&self.pool)
        .await?;
        self.add_transition(&d.id, &d.status, d.created_at_ms, None)
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

    /// Every devbox a run created, oldest first.
    pub async fn devboxes_of_invocation(&self, invocation_id: &str) -> Result<Vec<DevboxRecord>> {
        Ok(sqlx::query_as::<_, DevboxRecord>(&format!(
            "{SELECT} WHERE invocation_id = $1 ORDER BY id"
        ))
        .bind(invocation_id)
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

    pub(crate) async fn add_transition(
        &self,
        id: &str,
        status: &str,
        at_ms: i64,
        failure: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO devbox_transitions (devbox_id, transition_time_ms, status, failure_reason) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(at_ms)
        .bind(status)
        .bind(failure)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A devbox's status history, oldest first.
    pub async fn devbox_transitions(&self, id: &str) -> Result<Vec<Transition>> {
        Ok(sqlx::query_as::<_, Transition>(
            "SELECT status, transition_time_ms, failure_reason FROM devbox_transitions WHERE devbox_id = $1 ORDER BY transition_time_ms",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Record a status change (one statement, no read-modify-write). A devbox that has
    /// reached `shutdown` or `failure` stays there.
    pub async fn set_devbox_status(&self, id: &str, change: StatusChange<'_>) -> Result<()> {
        let now = now_ms();
        let ended = matches!(change.status, "shutdown" | "failure").then_some(now);
        let r = sqlx::query(
            "UPDATE devboxes SET status = $1, failure_reason = COALESCE($2, failure_reason), shutdown_reason = COALESCE($3, shutdown_reason), status_message = COALESCE($4, status_message), ended_at_ms = COALESCE($5, ended_at_ms) WHERE id = $6 AND status NOT IN ('shutdown', 'failure')",
        )
        .bind(change.status)
        .bind(change.failure_reason)
        .bind(change.shutdown_reason)
        .bind(change.message)
        .bind(ended)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 1 {
            self.add_transition(id, change.status, now, change.failure_reason)
                .await?;
        }
        Ok(())
    }

    /// Devboxes of this node (`node_id`) that were live when it stopped: after a restart
    /// they are gone. Suspended devboxes have no process to lose: they stay suspended.
    /// `node_id` `None`: every node's (a single node on SQLite).
    pub async fn shut_down_live_devboxes(
        &self,
        reason: &str,
        node_id: Option<&str>,
    ) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE devboxes SET status = 'shutdown', shutdown_reason = 'api_shutdown', status_message = $1, ended_at_ms = $2 WHERE status NOT IN ('shutdown', 'failure', 'suspended') AND ($3 IS NULL OR node_id = $3 OR node_id IS NULL)",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(node_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Devboxes of this node (`node_id`) that are suspended or were between running and suspended (`suspending`,
    /// `resuming`) when the server stopped, oldest first.
    /// `node_id` `None`: every node's (a single node on SQLite).
    pub async fn suspended_devboxes(&self, node_id: Option<&str>) -> Result<Vec<DevboxRecord>> {
        Ok(sqlx::query_as::<_, DevboxRecord>(&format!(
            "{SELECT} WHERE status IN ('suspending', 'suspended', 'resuming') AND ($1 IS NULL OR node_id = $1 OR node_id IS NULL) ORDER BY id"
        ))
        .bind(node_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many devboxes that may still run (anything but `shutdown` and `failure`) were
    /// started from the blueprint `blueprint_id`.
    pub async fn devboxes_using_blueprint(&self, blueprint_id: &str) -> Result<i64> {
        let row: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM devboxes WHERE blueprint_id = $1 AND status NOT IN ('shutdown', 'failure')",
        )
        .bind(blueprint_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0)
    }

    /// How many devboxes that may still run (anything but `shutdown` and `failure`) were
    /// started from the snapshot `snapshot_id`.
    pub async fn devboxes_using_snapshot(&self, snapshot_id: &str) -> Result<i64> {
        let row: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM devboxes WHERE snapshot_id = $1 AND status NOT IN ('shutdown', 'failure')",
        )
        .bind(snapshot_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0)
    }
}
