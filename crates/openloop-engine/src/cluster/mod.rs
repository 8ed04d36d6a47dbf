//! Cluster mode: several nodes on one PostgreSQL database.
//!
//! - `lease`: each node's heartbeat; taking over a node whose lease expired (its runs failed
//!   with `NodeLost` or queued again, its devboxes marked failed); a node that finds its own
//!   lease taken stops what it runs and rejoins under a new epoch.
//! - `queue`: queued runs are shared: a node with a free slot takes them
//!   (`FOR UPDATE SKIP LOCKED`), for deployments it has built, or any deployment once a run
//!   has waited longer than a lease.
//! - `limits`: a function's concurrency limit over all nodes, counted in the database.
//! - `bus`: every change notification and cancel is sent to the other nodes with
//!   `pg_notify`, and theirs are received with `LISTEN`, so `invoke_sync` on one node wakes
//!   when another node finishes the run.
//!
//! On SQLite a node is alone: it heartbeats (so `GET /v1/nodes` is true) and nothing else
//! here runs.

mod bus;
pub(crate) use bus::CANCEL_PREFIX;
mod lease;
pub(crate) mod limits;
pub(crate) mod queue;

use crate::invocations::Invocations;
use crate::recovery::CutShort;
use std::sync::Arc;

impl Invocations {
    /// Start this node's part in the cluster: heartbeats always; in cluster mode also the
    /// bus, the shared queue and the watch for lost nodes.
    pub fn join(self: &Arc<Self>) {
        tokio::spawn(Arc::clone(self).keep_lease());
        if let Some(url) = self.node.config.cluster_database_url.clone() {
            bus::start(Arc::clone(self), url);
            tokio::spawn(Arc::clone(self).serve_queue());
        }
    }
}

impl Invocations {
    /// This node is stopping: the runs it still has are cut short now (failed, or queued
    /// again for another node when retryable) rather than left until a lease expires, and
    /// its row says it stopped.
    pub async fn leave(&self) {
        let me = self.node.id();
        let epoch = self.node.epoch();
        // First: no more queued runs are taken here (any run still taken after the list
        // below is read is left to the other nodes' repair, `cluster::lease`).
        self.queue.stop();
        let cut = async {
            let runs = self.store.runs_of_node(me, epoch + 1).await?;
            self.cut_short(
                runs,
                CutShort {
                    kind: "ServerStopped",
                    message: "the server was stopped while this invocation was running; invoke it again (or mark the function retryable)",
                },
            )
            .await?;
            self.store.leave_cluster(me, epoch).await?;
            crate::EngineResult::Ok(())
        };
        if let Err(e) = cut.await {
            tracing::warn!(error = %e, "could not hand this node's runs back while stopping");
        }
    }
}
