//! Nodes of a cluster (several servers on one database) and what each owns: their
//! heartbeats and lease epochs, and the taking over of a node that stopped heartbeating.
//!
//! The statements marked "PostgreSQL only" (`FOR UPDATE SKIP LOCKED`, `pg_notify`) are used
//! only in cluster mode, which needs PostgreSQL; everything else is portable.

use crate::invocations::Owner;
use crate::{now_ms, Result, Store};
use serde::Serialize;

/// A node's row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct NodeRecord {
    pub id: String,
    /// Where other nodes reach its API (forwarded devbox calls).
    pub address: String,
    /// Grows at each start of the node and each time it rejoins after losing its lease.
    pub epoch: i64,
    /// `active`, `stopped` (shut down cleanly) or `lost` (stopped heartbeating; taken over).
    pub status: String,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
    pub lost_at_ms: Option<i64>,
    /// The node that took over its runs and devboxes, once it was lost.
    pub taken_over_by: Option<String>,
}

/// A run the lost node was running, as taken over.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrphanedRun {
    pub id: String,
    pub project_name: String,
    pub deployment_id: String,
    pub function_name: String,
    /// The node and epoch it was running under when read: cutting it short changes it only
    /// if it still is (fenced), never a later run of it.
    pub node_id: Option<String>,
    pub node_epoch: Option<i64>,
}

/// Queued runs of one function of one deployment.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueuedGroup {
    pub deployment_id: String,
    pub project_name: String,
    pub function_name: String,
    pub oldest_ms: i64,
}

/// How many runs and devboxes a node holds now.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct NodeLoad {
    pub node_id: String,
    pub count: i64,
}

/// Take up to `$6` queued runs of one function of a deployment (`$4`, `$5`) for a node (`$2`,
/// epoch `$3`), oldest first, at `$1`. The rows are picked once, in a CTE: as `WHERE id IN
/// (SELECT … LIMIT n)` the planner may run the subquery again per row and take more than `n`.
pub(crate) const CLAIM_QUEUED: &str = "WITH picked AS (SELECT id FROM invocations WHERE status = 'queued' AND deployment_id = $4 AND function_name = $5 ORDER BY created_at_ms LIMIT $6 FOR UPDATE SKIP LOCKED) UPDATE invocations SET status = 'running', started_at_ms = $1, node_id = $2, node_epoch = $3 FROM picked WHERE invocations.id = picked.id AND invocations.status = 'queued' RETURNING invocations.id";

/// An `OrphanedRun`'s columns, from `invocations`.
const ORPHANS: &str =
    "SELECT id, project_name, deployment_id, function_name, node_id, node_epoch FROM invocations";

const SELECT: &str = "SELECT id, address, epoch, status, started_at_ms, heartbeat_at_ms, lost_at_ms, taken_over_by FROM nodes";

impl Store {
    /// Register (or re-register) a node as active; returns its new epoch, one more than any
    /// it held before.
    pub async fn join_cluster(&self, id: &str, address: &str) -> Result<i64> {
        let now = now_ms();
        let row: (i64,) = sqlx::query_as(
            "INSERT INTO nodes (id, address, epoch, status, started_at_ms, heartbeat_at_ms) VALUES ($1, $2, 1, 'active', $3, $3) ON CONFLICT (id) DO UPDATE SET address = $2, epoch = nodes.epoch + 1, status = 'active', started_at_ms = $3, heartbeat_at_ms = $3, lost_at_ms = NULL, taken_over_by = NULL RETURNING epoch",
        )
        .bind(id)
        .bind(address)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0)
    }

    /// Renew a node's lease. False when the lease is no longer its own (it was taken over,
    /// or the node rejoined under a newer epoch): the node must stop what it runs.
    pub async fn heartbeat(&self, id: &str, epoch: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE nodes SET heartbeat_at_ms = $1 WHERE id = $2 AND epoch = $3 AND status = 'active'",
        )
        .bind(now_ms())
        .bind(id)
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// A node stopping cleanly.
    pub async fn leave_cluster(&self, id: &str, epoch: i64) -> Result<()> {
        sqlx::query("UPDATE nodes SET status = 'stopped' WHERE id = $1 AND epoch = $2")
            .bind(id)
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Active nodes that heartbeated since `cutoff_ms` (this one included).
    pub async fn active_nodes_since(&self, cutoff_ms: i64) -> Result<usize> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM nodes WHERE status = 'active' AND heartbeat_at_ms >= $1",
        )
        .bind(cutoff_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as usize)
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>> {
        Ok(
            sqlx::query_as::<_, NodeRecord>(&format!("{SELECT} ORDER BY id"))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>> {
        Ok(
            sqlx::query_as::<_, NodeRecord>(&format!("{SELECT} WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Active nodes (other than `me`) whose last heartbeat is older than `cutoff_ms`.
    pub async fn expired_nodes(&self, me: &str, cutoff_ms: i64) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM nodes WHERE status = 'active' AND heartbeat_at_ms < $1 AND id <> $2 ORDER BY id",
        )
        .bind(cutoff_ms)
        .bind(me)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Mark an expired node lost, taken over by `by`. Only one node wins: `None` when the node
    /// heartbeated meanwhile or another node took it over first.
    /// Returns the epoch it was lost under, when this node won.
    pub async fn take_over_node(&self, id: &str, by: &str, cutoff_ms: i64) -> Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE nodes SET status = 'lost', lost_at_ms = $1, taken_over_by = $2 WHERE id = $3 AND status = 'active' AND heartbeat_at_ms < $4 RETURNING epoch",
        )
        .bind(now_ms())
        .bind(by)
        .bind(id)
        .bind(cutoff_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// The runs this node was running under an epoch before `below_epoch` (a previous
    /// process of it). Runs recorded before cluster mode have no node: they count as the
    /// restarting node's own.
    pub async fn runs_of_node(&self, id: &str, below_epoch: i64) -> Result<Vec<OrphanedRun>> {
        Ok(sqlx::query_as::<_, OrphanedRun>(&format!(
            "{ORPHANS} WHERE status = 'running' AND (node_id = $1 OR node_id IS NULL) AND (node_epoch IS NULL OR node_epoch < $2) ORDER BY id"
        ))
        .bind(id)
        .bind(below_epoch)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The runs another node was running when it was lost (under its lost epoch or before:
    /// not what it runs after rejoining).
    pub async fn runs_owned_by(&self, id: &str, up_to_epoch: i64) -> Result<Vec<OrphanedRun>> {
        Ok(sqlx::query_as::<_, OrphanedRun>(&format!(
            "{ORPHANS} WHERE status = 'running' AND node_id = $1 AND node_epoch <= $2 ORDER BY id"
        ))
        .bind(id)
        .bind(up_to_epoch)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every running invocation (a single node on SQLite recovers them all at its start,
    /// whatever node id they were recorded under).
    pub async fn all_running(&self) -> Result<Vec<OrphanedRun>> {
        Ok(sqlx::query_as::<_, OrphanedRun>(&format!(
            "{ORPHANS} WHERE status = 'running' ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Runs left `running` under a node that no longer runs them: one that stopped or was
    /// lost (a takeover cut short, or runs claimed while it was stopping), or an epoch older
    /// than its node's current one when that node (not `me`) started before `started_before_ms`
    /// (a node recovers its own earlier epochs' runs as it starts; this is for what that left).
    pub async fn stranded_runs(
        &self,
        me: &str,
        started_before_ms: i64,
    ) -> Result<Vec<OrphanedRun>> {
        Ok(sqlx::query_as::<_, OrphanedRun>(
            "SELECT i.id, i.project_name, i.deployment_id, i.function_name, i.node_id, i.node_epoch FROM invocations i JOIN nodes n ON n.id = i.node_id WHERE i.status = 'running' AND (n.status <> 'active' OR (i.node_epoch < n.epoch AND n.id <> $1 AND n.started_at_ms < $2)) ORDER BY i.id",
        )
        .bind(me)
        .bind(started_before_ms)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Runs of node `id` canceled since `since_ms` (a node kills any it still runs: a cancel
    /// sent on the bus may have been lost).
    pub async fn canceled_runs_of_node(&self, id: &str, since_ms: i64) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM invocations WHERE node_id = $1 AND status = 'canceled' AND ended_at_ms > $2",
        )
        .bind(id)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Put a run of a lost or restarted node back in the queue, for any node to take.
    pub async fn requeue_run_of_node(&self, run: &OrphanedRun) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE invocations SET status = 'queued', started_at_ms = NULL, node_id = NULL, node_epoch = NULL, lending = 0 WHERE id = $1 AND status = 'running' AND (node_id = $2 OR (node_id IS NULL AND $2 IS NULL)) AND (node_epoch = $3 OR (node_epoch IS NULL AND $3 IS NULL))",
        )
        .bind(&run.id)
        .bind(&run.node_id)
        .bind(run.node_epoch)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Fail a run of a lost or restarted node with `error` (JSON text).
    pub async fn fail_run_of_node(&self, run: &OrphanedRun, error: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE invocations SET status = 'failure', error = $1, ended_at_ms = $2 WHERE id = $3 AND status = 'running' AND (node_id = $4 OR (node_id IS NULL AND $4 IS NULL)) AND (node_epoch = $5 OR (node_epoch IS NULL AND $5 IS NULL))",
        )
        .bind(error)
        .bind(now_ms())
        .bind(&run.id)
        .bind(&run.node_id)
        .bind(run.node_epoch)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Put back a run this node just took but cannot run (more taken than asked for).
    pub async fn unclaim(&self, run: &str, owner: Owner<'_>) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE invocations SET status = 'queued', started_at_ms = NULL, node_id = NULL, node_epoch = NULL WHERE id = $1 AND status = 'running' AND node_id = $2 AND node_epoch = $3",
        )
        .bind(run)
        .bind(owner.node)
        .bind(owner.epoch)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Devboxes of a lost node that were live: marked failed (their sandboxes were on that
    /// machine), never left reported as running. Suspended ones keep their disk there and
    /// stay suspended. Returns their ids.
    pub async fn lose_devboxes_of_node(&self, node: &str, message: &str) -> Result<Vec<String>> {
        let now = now_ms();
        let ids: Vec<(String,)> = sqlx::query_as(
            "UPDATE devboxes SET status = 'failure', failure_reason = 'execution_failed', status_message = $1, ended_at_ms = $2 WHERE node_id = $3 AND status NOT IN ('shutdown', 'failure', 'suspended') RETURNING id",
        )
        .bind(message)
        .bind(now)
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<String> = ids.into_iter().map(|r| r.0).collect();
        for id in &ids {
            self.add_transition(id, "failure", now, Some("execution_failed"))
                .await?;
        }
        Ok(ids)
    }

    /// Take up to `limit` queued runs of one function of a deployment for `owner`, oldest
    /// first (PostgreSQL only: rows other nodes are taking at the same moment are skipped,
    /// not waited for).
    pub async fn claim_queued(
        &self,
        deployment_id: &str,
        function_name: &str,
        owner: Owner<'_>,
        limit: i64,
    ) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(CLAIM_QUEUED)
            .bind(now_ms())
            .bind(owner.node)
            .bind(owner.epoch)
            .bind(deployment_id)
            .bind(function_name)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The functions with queued runs, with when their oldest was queued.
    pub async fn queued_groups(&self) -> Result<Vec<QueuedGroup>> {
        Ok(sqlx::query_as::<_, QueuedGroup>(
            "SELECT deployment_id, project_name, function_name, MIN(created_at_ms) AS oldest_ms FROM invocations WHERE status = 'queued' GROUP BY deployment_id, project_name, function_name ORDER BY oldest_ms",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Running invocations per node.
    pub async fn runs_per_node(&self) -> Result<Vec<NodeLoad>> {
        Ok(sqlx::query_as::<_, NodeLoad>(
            "SELECT node_id, COUNT(*) AS count FROM invocations WHERE status = 'running' AND node_id IS NOT NULL GROUP BY node_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Live devboxes per node.
    pub async fn devboxes_per_node(&self) -> Result<Vec<NodeLoad>> {
        Ok(sqlx::query_as::<_, NodeLoad>(
            "SELECT node_id, COUNT(*) AS count FROM devboxes WHERE status NOT IN ('shutdown', 'failure') AND node_id IS NOT NULL GROUP BY node_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Tell every node listening on `channel` (PostgreSQL only).
    pub async fn pg_notify(&self, channel: &str, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The node a devbox lives on, if recorded.
    pub async fn devbox_node(&self, devbox_id: &str) -> Result<Option<String>> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT node_id FROM devboxes WHERE id = $1")
                .bind(devbox_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|r| r.0))
    }
}

/// A connection listening on one notification channel (PostgreSQL only).
pub struct Listener(sqlx::postgres::PgListener);

impl Listener {
    pub async fn connect(url: &str, channel: &str) -> Result<Listener> {
        let mut l = sqlx::postgres::PgListener::connect(url).await?;
        l.listen(channel).await?;
        Ok(Listener(l))
    }

    /// The next notification's payload; `None` when the connection was lost (it reconnects
    /// on the next call, and what was sent meanwhile is gone: read the state again).
    pub async fn recv(&mut self) -> Result<Option<String>> {
        Ok(self.0.try_recv().await?.map(|n| n.payload().to_string()))
    }
}

impl Store {
    /// Record the hash of a devbox's tunnel key (`None`: it has none).
    pub async fn set_tunnel_key_hash(&self, devbox_id: &str, hash: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE devboxes SET tunnel_key_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(devbox_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The address of the active node a live devbox with this tunnel key hash lives on.
    pub async fn tunnel_node_address(&self, hash: &str) -> Result<Option<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT n.id, n.address FROM devboxes d JOIN nodes n ON n.id = d.node_id WHERE d.tunnel_key_hash = $1 AND d.status NOT IN ('shutdown', 'failure') AND n.status = 'active'",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?)
    }
}
