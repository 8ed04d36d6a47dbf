//! A cluster's per-function concurrency limit (PostgreSQL only): the runs of a function that
//! hold a slot are its invocations `running` and not `lending` (waiting on another invocation,
//! to which they lent the slot). Each decision to let one more run hold a slot counts them
//! under the function's advisory transaction lock, so two nodes never both take the last.

use crate::invocations::{bind_new, Commit, Invocation, Owner, INSERT};
use crate::{now_ms, Result, Store};

/// What a queued run found when it tried to take a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotClaim {
    /// It is running now, on the claiming node.
    Taken,
    /// Every slot of its function is held: wait for one to be freed.
    Full,
    /// It is no longer queued (canceled, or another node took it).
    NotQueued,
}

/// The advisory lock of one function's slots.
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";
/// The same, in a transaction that records a run with [`Commit::Deferred`].
const LOCK_DEFERRED: &str =
    "SELECT pg_advisory_xact_lock(hashtext($1)), set_config('synchronous_commit', 'off', true)";
const HOLDERS: &str = "SELECT COUNT(*) FROM invocations WHERE project_name = $1 AND function_name = $2 AND status = 'running' AND lending = 0";

fn lock_key(project: &str, function: &str) -> String {
    format!("function-slots:{project}/{function}")
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

async fn lock_and_count(
    tx: &mut Tx<'_>,
    project: &str,
    function: &str,
    commit: Commit,
) -> Result<i64> {
    sqlx::query(match commit {
        Commit::Durable => LOCK,
        Commit::Deferred => LOCK_DEFERRED,
    })
    .bind(lock_key(project, function))
    .execute(&mut **tx)
    .await?;
    let (n,): (i64,) = sqlx::query_as(HOLDERS)
        .bind(project)
        .bind(function)
        .fetch_one(&mut **tx)
        .await?;
    Ok(n)
}

impl Store {
    /// Record a new invocation as running on `owner` if its function has a free slot among
    /// `limit`, else as queued. True when it was recorded running. `commit` as for
    /// [`Store::insert_invocation`].
    pub async fn insert_invocation_within(
        &self,
        inv: &Invocation,
        owner: Owner<'_>,
        limit: i64,
        commit: Commit,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let running =
            lock_and_count(&mut tx, &inv.project_name, &inv.function_name, commit).await? < limit;
        let row = Invocation {
            status: if running { "running" } else { "queued" }.into(),
            started_at_ms: running.then_some(inv.created_at_ms),
            ..inv.clone()
        };
        bind_new(INSERT, &row, running.then_some(owner))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(running)
    }

    /// Move a queued invocation to running on `owner` if its function has a free slot.
    pub async fn mark_running_within(
        &self,
        id: &str,
        project: &str,
        function: &str,
        owner: Owner<'_>,
        limit: i64,
    ) -> Result<SlotClaim> {
        let mut tx = self.pool.begin().await?;
        if lock_and_count(&mut tx, project, function, Commit::Durable).await? >= limit {
            return Ok(SlotClaim::Full);
        }
        let r = sqlx::query("UPDATE invocations SET status = 'running', started_at_ms = $1, node_id = $2, node_epoch = $3 WHERE id = $4 AND status = 'queued'")
            .bind(now_ms())
            .bind(owner.node)
            .bind(owner.epoch)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(if r.rows_affected() == 1 {
            SlotClaim::Taken
        } else {
            SlotClaim::NotQueued
        })
    }

    /// Take up to `want` queued runs of a function for `owner`, no more than its free slots.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_queued_within(
        &self,
        deployment_id: &str,
        project: &str,
        function: &str,
        owner: Owner<'_>,
        want: i64,
        limit: i64,
    ) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let free = limit - lock_and_count(&mut tx, project, function, Commit::Durable).await?;
        let n = want.min(free);
        if n <= 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(String,)> = sqlx::query_as(crate::nodes::CLAIM_QUEUED)
            .bind(now_ms())
            .bind(owner.node)
            .bind(owner.epoch)
            .bind(deployment_id)
            .bind(function)
            .bind(n)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// A running invocation waits on another: its slot is lent (not counted) until
    /// [`Store::take_back_slot`].
    pub async fn lend_slot(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE invocations SET lending = 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Its wait is over: it holds a slot again if one is free. False when every slot is held.
    pub async fn take_back_slot(
        &self,
        id: &str,
        project: &str,
        function: &str,
        limit: i64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if lock_and_count(&mut tx, project, function, Commit::Durable).await? >= limit {
            return Ok(false);
        }
        sqlx::query("UPDATE invocations SET lending = 0 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}
