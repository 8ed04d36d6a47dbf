//! A function's concurrency limit across the cluster (`--max-concurrent-runs-per-function`,
//! the same on every node). Each node still bounds its own runs with its semaphores
//! (`slots`); in a cluster the database also counts the function's runs that hold a slot
//! (`openloop_store::function_slots`), so the limit holds over all nodes together. A run
//! waiting on another invocation lends its slot in the database too, so a tree of calls
//! spread over nodes cannot hold every slot while it waits for one.

use crate::invocations::Invocations;
use crate::slots::RunSlots;
use crate::EngineResult;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a run waiting for a slot looks again without a notice (one may be lost).
const RECHECK: Duration = Duration::from_secs(5);

/// The key told when a slot of a function may have been freed.
pub(crate) fn freed_key(project: &str, function: &str) -> String {
    format!("function-slot:{project}/{function}")
}

impl Invocations {
    /// The per-function limit the database enforces: in a cluster, when one is set.
    pub(crate) fn cluster_limit(&self) -> Option<i64> {
        let limit = self.config.max_concurrent_runs_per_function;
        (self.node.clustered() && limit > 0).then_some(limit as i64)
    }

    /// A slot of the function may be free now: tell the waiting runs on every node.
    pub(crate) fn slot_freed(&self, project: &str, function: &str) {
        if self.cluster_limit().is_some() {
            self.notifier.notify(&freed_key(project, function));
        }
    }

    /// Wait until a slot of the function may have been freed (or a while has passed).
    pub(crate) async fn wait_for_freed_slot(&self, freed: &mut crate::notify::Subscription) {
        let _ = tokio::time::timeout(RECHECK, freed.changed()).await;
    }

    /// Before run `id` waits on another invocation: its function slot is lent in the
    /// database (once, however many waits it has at a time).
    pub(crate) async fn lend_in_cluster(&self, id: &str, run: &RunSlots) -> EngineResult<()> {
        if self.cluster_limit().is_none() || run.cluster_lent.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.store.lend_slot(id).await?;
        let inv = self.store.get_invocation(id).await?;
        self.slot_freed(&inv.project_name, &inv.function_name);
        Ok(())
    }

    /// After run `id`'s last wait, once it holds its node's slots again: it holds a slot of
    /// its function in the database again, waiting for one if every one is held.
    pub(crate) async fn take_back_in_cluster(&self, id: &str, run: &RunSlots) -> EngineResult<()> {
        let Some(limit) = self.cluster_limit() else {
            return Ok(());
        };
        if !run.holds_slots() || !run.cluster_lent.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let inv = self.store.get_invocation(id).await?;
        let (project, function) = (&inv.project_name, &inv.function_name);
        loop {
            let mut freed = self.notifier.subscribe(&freed_key(project, function));
            if self
                .store
                .take_back_slot(id, project, function, limit)
                .await?
            {
                return Ok(());
            }
            self.wait_for_freed_slot(&mut freed).await;
        }
    }
}
