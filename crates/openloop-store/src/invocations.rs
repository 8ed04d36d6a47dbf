//! Invocations (one run of a function) and their logs.

use crate::{now_ms, Result, Store, StoreError};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Invocation {
    pub id: String,
    pub project_name: String,
    pub function_name: String,
    pub deployment_id: String,
    /// `queued`, `running`, `success`, `failure` or `canceled`.
    pub status: String,
    /// JSON text.
    pub request: String,
    /// JSON text of the return value, on success.
    pub result: Option<String>,
    /// JSON text `{type, message, traceback}`, on failure.
    pub error: Option<String>,
    pub parent_invocation_id: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
}

impl Invocation {
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "success" | "failure" | "canceled")
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct InvocationLog {
    pub seq: i64,
    pub ts_ms: i64,
    /// `stdout`, `stderr` or `log` (the `logging` module).
    pub stream: String,
    pub level: Option<String>,
    pub message: String,
}

/// The node that runs an invocation, and the lease epoch it took it under.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub node: &'a str,
    pub epoch: i64,
}

/// How the commit that records a new invocation reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// As every other commit: on PostgreSQL flushed before the statement returns; on SQLite
    /// written to its WAL, which `synchronous = NORMAL` flushes at checkpoints (safe from a
    /// crash of Openloop, not of the machine).
    Durable,
    /// By the next flushing commit, for a caller answered only after one (`invoke_sync`,
    /// answered after the run's outcome is committed). On PostgreSQL the insert commits with
    /// `synchronous_commit` off for its own transaction, so it does not wait for a WAL flush.
    /// Its commit record is in the WAL before the outcome's, and a flush writes the WAL in
    /// order, so the outcome's commit puts both on disk before the caller hears anything:
    /// one flush per `invoke_sync` instead of two. Meanwhile the row is visible to every
    /// session and survives a crash of Openloop; a crash of PostgreSQL or its machine before
    /// the flush (PostgreSQL's WAL writer does it within three `wal_writer_delay`s) loses it,
    /// with the run in flight. On SQLite the same as `Durable`.
    Deferred,
}

/// The insert of a new invocation, both databases.
pub(crate) const INSERT: &str = "INSERT INTO invocations (id, project_name, function_name, deployment_id, status, request, parent_invocation_id, created_at_ms, started_at_ms, node_id, node_epoch) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// `sql` ([`INSERT`] or [`INSERT_DEFERRED`]) with a new invocation's values bound: its row as
/// `inv` has it, run by `owner` (none while it is queued).
pub(crate) fn bind_new<'q>(
    sql: &'q str,
    inv: &'q Invocation,
    owner: Option<Owner<'q>>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(sql)
        .bind(&inv.id)
        .bind(&inv.project_name)
        .bind(&inv.function_name)
        .bind(&inv.deployment_id)
        .bind(&inv.status)
        .bind(&inv.request)
        .bind(&inv.parent_invocation_id)
        .bind(inv.created_at_ms)
        .bind(inv.started_at_ms)
        .bind(owner.map(|o| o.node))
        .bind(owner.map(|o| o.epoch))
}

/// The same insert on PostgreSQL with [`Commit::Deferred`]: `set_config(…, true)` sets
/// `synchronous_commit` for this statement's own transaction only, in the same round trip.
const INSERT_DEFERRED: &str = "INSERT INTO invocations (id, project_name, function_name, deployment_id, status, request, parent_invocation_id, created_at_ms, started_at_ms, node_id, node_epoch) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS deferred";

/// Filters for listing invocations.
#[derive(Debug, Default, Clone)]
pub struct InvocationFilter {
    pub status: Option<String>,
    pub project_name: Option<String>,
    pub function_name: Option<String>,
    /// Return invocations created before this id (ids are time-ordered).
    pub before_id: Option<String>,
    pub limit: i64,
}

const SELECT: &str = "SELECT id, project_name, function_name, deployment_id, status, request, result, error, parent_invocation_id, created_at_ms, started_at_ms, ended_at_ms FROM invocations";

impl Store {
    /// Record a new invocation; `owner` is the node running it and its epoch when it is
    /// recorded as running (none while it is queued). `commit` says whether the caller is
    /// answered with this record or only after a later durable commit (see [`Commit`]).
    pub async fn insert_invocation(
        &self,
        inv: &Invocation,
        owner: Option<Owner<'_>>,
        commit: Commit,
    ) -> Result<()> {
        let sql = if commit == Commit::Deferred && !self.is_sqlite() {
            INSERT_DEFERRED
        } else {
            INSERT
        };
        bind_new(sql, inv, owner).execute(&self.pool).await?;
        Ok(())
    }

    /// Insert many invocations in one transaction (imports, and the benchmark's history).
    pub async fn insert_invocations(&self, all: &[Invocation]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for inv in all {
            sqlx::query(
                "INSERT INTO invocations (id, project_name, function_name, deployment_id, status, request, result, error, parent_invocation_id, created_at_ms, started_at_ms, ended_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(&inv.id)
            .bind(&inv.project_name)
            .bind(&inv.function_name)
            .bind(&inv.deployment_id)
            .bind(&inv.status)
            .bind(&inv.request)
            .bind(&inv.result)
            .bind(&inv.error)
            .bind(&inv.parent_invocation_id)
            .bind(inv.created_at_ms)
            .bind(inv.started_at_ms)
            .bind(inv.ended_at_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_invocation(&self, id: &str) -> Result<Invocation> {
        sqlx::query_as::<_, Invocation>(&format!("{SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("invocation '{id}'")))
    }

    /// One page, newest first, under the filter's conditions. Each combination of filters
    /// has its own static statement whose conditions match an index (`0006_dashboard.sql`),
    /// and the cursor is always a bound value (`id < $n`), so a page is one index range scan
    /// however large the history is.
    pub async fn list_invocations(&self, f: &InvocationFilter) -> Result<Vec<Invocation>> {
        macro_rules! page {
            ($cond:literal) => {
                concat!(
                    "SELECT id, project_name, function_name, deployment_id, status, request, result, error, parent_invocation_id, created_at_ms, started_at_ms, ended_at_ms FROM invocations WHERE ",
                    $cond,
                    " ORDER BY id DESC LIMIT $1"
                )
            };
        }
        // The first page: greater than every id (`inv_` then lowercase hex digits), in byte
        // order and in any locale's collation (letters after digits, `g` after `f`).
        let before = f.before_id.as_deref().unwrap_or("inv_g");
        let (status, project, function) = (
            f.status.as_deref(),
            f.project_name.as_deref(),
            f.function_name.as_deref(),
        );
        let (sql, values): (&str, Vec<&str>) = match (status, project, function) {
            (None, None, None) => (page!("id < $2"), vec![before]),
            (Some(s), None, None) => (page!("status = $2 AND id < $3"), vec![s, before]),
            (None, Some(p), None) => (page!("project_name = $2 AND id < $3"), vec![p, before]),
            (Some(s), Some(p), None) => (
                page!("project_name = $2 AND status = $3 AND id < $4"),
                vec![p, s, before],
            ),
            (None, Some(p), Some(n)) => (
                page!("project_name = $2 AND function_name = $3 AND id < $4"),
                vec![p, n, before],
            ),
            (Some(s), Some(p), Some(n)) => (
                page!("project_name = $2 AND function_name = $3 AND status = $4 AND id < $5"),
                vec![p, n, s, before],
            ),
            (None, None, Some(n)) => (page!("function_name = $2 AND id < $3"), vec![n, before]),
            (Some(s), None, Some(n)) => (
                page!("function_name = $2 AND status = $3 AND id < $4"),
                vec![n, s, before],
            ),
        };
        let mut q = sqlx::query_as::<_, Invocation>(sql).bind(f.limit);
        for v in values {
            q = q.bind(v);
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// The invocations a run started, oldest first (at most `limit`).
    pub async fn child_invocations(&self, parent_id: &str, limit: i64) -> Result<Vec<Invocation>> {
        Ok(sqlx::query_as::<_, Invocation>(&format!(
            "{SELECT} WHERE parent_invocation_id = $1 ORDER BY id LIMIT $2"
        ))
        .bind(parent_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Move a queued invocation to running on `owner`. False when it was no longer queued
    /// (canceled, or another node took it).
    pub async fn mark_invocation_running(&self, id: &str, owner: Owner<'_>) -> Result<bool> {
        let r = sqlx::query("UPDATE invocations SET status = 'running', started_at_ms = $1, node_id = $2, node_epoch = $3 WHERE id = $4 AND status = 'queued'")
            .bind(now_ms())
            .bind(owner.node)
            .bind(owner.epoch)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Record the outcome of a run its owner ran. Fenced: only while the run is still
    /// `running` under this owner and epoch, so a node whose lease was taken over (and its
    /// runs failed or re-run elsewhere) changes nothing. False when it changed nothing.
    pub async fn finish_run(
        &self,
        id: &str,
        owner: Owner<'_>,
        status: &str,
        result: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE invocations SET status = $1, result = $2, error = $3, ended_at_ms = $4 WHERE id = $5 AND status = 'running' AND node_id = $6 AND node_epoch = $7",
        )
        .bind(status)
        .bind(result)
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .bind(owner.node)
        .bind(owner.epoch)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Fail an invocation that is still queued (it could not be started), and nothing else.
    pub async fn fail_queued(&self, id: &str, error: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE invocations SET status = 'failure', error = $1, ended_at_ms = $2 WHERE id = $3 AND status = 'queued'",
        )
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Record the end of an invocation whatever node runs it (a cancel). Only one that has not
    /// already finished is changed.
    pub async fn finish_invocation(
        &self,
        id: &str,
        status: &str,
        result: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE invocations SET status = $1, result = $2, error = $3, ended_at_ms = $4 WHERE id = $5 AND status IN ('queued', 'running')",
        )
        .bind(status)
        .bind(result)
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Ids of invocations in a status, oldest first.
    pub async fn invocation_ids_with_status(&self, status: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM invocations WHERE status = $1 ORDER BY id")
                .bind(status)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Append log lines; `first_seq` numbers the first, the rest follow.
    pub async fn append_invocation_logs(
        &self,
        id: &str,
        first_seq: i64,
        lines: &[InvocationLog],
    ) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (i, l) in lines.iter().enumerate() {
            sqlx::query(
                "INSERT INTO invocation_logs (invocation_id, seq, ts_ms, stream, level, message) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(first_seq + i as i64)
            .bind(l.ts_ms)
            .bind(&l.stream)
            .bind(&l.level)
            .bind(&l.message)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn invocation_logs(
        &self,
        id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<InvocationLog>> {
        Ok(sqlx::query_as::<_, InvocationLog>(
            "SELECT seq, ts_ms, stream, level, message FROM invocation_logs WHERE invocation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::new_id;

    /// A fresh PostgreSQL database from `OPENLOOP_TEST_POSTGRES_URL`; None (skipped) when it
    /// is unset, except in CI or under `scripts/test.sh`, where that fails the test.
    async fn postgres_database() -> Option<(String, String)> {
        let Some(admin) = std::env::var("OPENLOOP_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
        else {
            let required = ["CI", "OPENLOOP_REQUIRE_POSTGRES"]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
            assert!(
                !required,
                "OPENLOOP_TEST_POSTGRES_URL must be set in CI and under scripts/test.sh"
            );
            eprintln!("skipping the PostgreSQL half: OPENLOOP_TEST_POSTGRES_URL is not set");
            return None;
        };
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        // Letters and digits of our own: no value is formatted into SQL.
        let name = new_id("openloop_store_test").replace('-', "_");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Some((format!("{base}/{name}"), name))
    }

    fn invocation(running: bool) -> Invocation {
        Invocation {
            id: new_id("inv"),
            project_name: "p".into(),
            function_name: "f".into(),
            deployment_id: "dpl_1".into(),
            status: if running { "running" } else { "queued" }.into(),
            request: r#"{"a":1}"#.into(),
            result: None,
            error: None,
            parent_invocation_id: None,
            created_at_ms: 7,
            started_at_ms: running.then_some(7),
            ended_at_ms: None,
        }
    }

    /// Both kinds of commit record the same row, queued (its nulls) or running, on either
    /// database; on PostgreSQL the deferred one's setting ends with its own transaction, so
    /// later commits on the same connection (an `invoke_async` answered with its record, the
    /// outcome that makes a deferred record durable) still wait for the disk.
    async fn check(store: &Store) {
        let owner = Owner {
            node: "node_a",
            epoch: 3,
        };
        for commit in [Commit::Deferred, Commit::Durable] {
            for running in [false, true] {
                let inv = invocation(running);
                store
                    .insert_invocation(&inv, running.then_some(owner), commit)
                    .await
                    .unwrap();
                let got = store.get_invocation(&inv.id).await.unwrap();
                assert_eq!(got.status, inv.status);
                assert_eq!(got.request, inv.request);
                assert_eq!(got.started_at_ms, inv.started_at_ms);
                assert_eq!(got.parent_invocation_id, None);
                if running {
                    assert!(store
                        .finish_run(&inv.id, owner, "success", Some("1"), None)
                        .await
                        .unwrap());
                }
            }
        }
        if store.is_sqlite() {
            return;
        }
        let within = invocation(true);
        assert!(store
            .insert_invocation_within(&within, owner, 5, Commit::Deferred)
            .await
            .unwrap());
        // Done one after another, these use one pooled connection.
        for _ in 0..5 {
            store
                .insert_invocation(&invocation(false), None, Commit::Deferred)
                .await
                .unwrap();
            let (setting,): (String,) = sqlx::query_as("SHOW synchronous_commit")
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(setting, "on");
        }
    }

    #[tokio::test]
    async fn deferred_and_durable_commits_record_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Store::connect(&Store::sqlite_url(&dir.path().join("t.db")))
            .await
            .unwrap();
        check(&sqlite).await;
        if let Some((url, name)) = postgres_database().await {
            let store = Store::connect(&url).await.unwrap();
            check(&store).await;
            store.pool.close().await;
            let admin = std::env::var("OPENLOOP_TEST_POSTGRES_URL").unwrap();
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}
