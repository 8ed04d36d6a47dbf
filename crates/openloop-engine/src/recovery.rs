//! Runs cut short: after this node restarts (the runs of its previous epoch), or when another
//! node is lost (its runs, taken over by this node). Each is failed, or queued again when its
//! function is retryable; queued runs then run.

use crate::invocations::{manifest_of, Invocations};
use crate::EngineResult;
use openloop_store::nodes::OrphanedRun;
use openloop_sync::lock;
use std::sync::Arc;

/// What a previous server process left: the invocations it was running and those still
/// queued, read before this process takes any request (so that no run of its own is among
/// them).
pub struct Leftovers {
    running: Vec<OrphanedRun>,
    queued: Vec<String>,
}

/// Why runs were cut short, as their error says.
pub(crate) struct CutShort<'a> {
    /// The error's `type`: `ServerRestarted` or `NodeLost`.
    pub kind: &'a str,
    pub message: &'a str,
}

impl Invocations {
    /// The invocations a previous process of this node left, to hand to
    /// [`Invocations::recover`]. Read before the server serves: recovery itself waits for the
    /// warm processes, and runs submitted meanwhile (recorded `running` at once when a slot is
    /// free) are not leftovers: they carry this process's epoch.
    pub async fn leftovers(&self) -> EngineResult<Leftovers> {
        // In a cluster, this node's own runs of its earlier epochs (the others' are theirs,
        // or taken over when they are lost); alone on SQLite, every running invocation,
        // whatever node id it was recorded under.
        let running = if self.node.clustered() {
            self.store
                .runs_of_node(self.node.id(), self.node.epoch())
                .await?
        } else {
            self.store.all_running().await?
        };
        // In a cluster the queue is shared: queued runs are taken by whichever node has a
        // free slot (`cluster::queue`), not by the one that queued them.
        let queued = if self.node.clustered() {
            Vec::new()
        } else {
            self.store.invocation_ids_with_status("queued").await?
        };
        Ok(Leftovers { running, queued })
    }

    /// After a restart: runs that were running are failed (or queued again when retryable),
    /// queued ones run.
    pub async fn recover(self: &Arc<Self>, left: Leftovers) -> EngineResult<()> {
        let requeued = self
            .cut_short(
                left.running,
                CutShort {
                    kind: "ServerRestarted",
                    message: "the server stopped while this invocation was running; invoke it again (or mark the function retryable)",
                },
            )
            .await?;
        if self.node.clustered() {
            self.queue.wake();
            return Ok(());
        }
        let queued: Vec<String> = left.queued.into_iter().chain(requeued).collect();
        if !queued.is_empty() {
            tracing::info!(count = queued.len(), "resuming queued invocations");
        }
        for id in queued {
            self.spawn(id);
        }
        Ok(())
    }

    /// Fail each run, or queue it again when its function is retryable; returns the ones
    /// queued again. Each change is announced (in a cluster, to every node).
    pub(crate) async fn cut_short(
        &self,
        runs: Vec<OrphanedRun>,
        why: CutShort<'_>,
    ) -> EngineResult<Vec<String>> {
        let mut requeued = Vec::new();
        for run in runs {
            if self.retryable(&run.deployment_id, &run.function_name).await
                && self.store.requeue_run_of_node(&run).await?
            {
                tracing::info!(invocation = %run.id, node = ?run.node_id, "re-queued a retryable run cut short ({})", why.kind);
                requeued.push(run.id.clone());
            } else {
                let err = serde_json::json!({
                    "type": why.kind,
                    "message": why.message,
                    "traceback": null,
                });
                self.store.fail_run_of_node(&run, &err.to_string()).await?;
            }
            self.notifier.invocation_changed(&run.id);
            self.slot_freed(&run.project_name, &run.function_name);
        }
        if !requeued.is_empty() {
            self.notifier.notify(crate::notify::QUEUED);
        }
        Ok(requeued)
    }

    /// Whether a function may be run again after its run was cut short. Read from the stored
    /// manifest: no node needs to have built the deployment to answer.
    async fn retryable(&self, deployment_id: &str, function: &str) -> bool {
        let cached = lock(&self.loaded).get(deployment_id).cloned();
        let manifest = match cached {
            Some(l) => Some(l.manifest.clone()),
            None => match self.store.get_deployment(deployment_id).await {
                Ok(dep) => manifest_of(&dep).ok(),
                Err(_) => None,
            },
        };
        manifest
            .and_then(|m| m.function(function).map(|f| f.retryable))
            .unwrap_or(false)
    }
}
