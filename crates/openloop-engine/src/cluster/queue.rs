//! The shared queue: a node with a free slot takes queued runs, whichever node queued them.
//!
//! Woken without polling: by [`QUEUED`] (a run was queued here or, through the bus, on
//! another node), and by a slot freed on this node while queued runs may be waiting. The
//! lease loop also wakes it once per heartbeat, so a run queued for a deployment no live
//! node has built is taken (and the deployment built) once it has waited a lease.

use crate::invocations::Invocations;
use crate::lifecycle::Start;
use crate::notify::QUEUED;
use crate::slots::Permits;
use crate::EngineResult;
use openloop_store::now_ms;
use openloop_sync::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Most runs taken in one statement.
const BATCH: usize = 16;

/// Whether queued runs may be waiting, and the sweeper's wake-up.
#[derive(Default)]
pub(crate) struct QueueState {
    pending: AtomicBool,
    wake: Notify,
    /// The node is stopping: it takes no more runs.
    stopping: AtomicBool,
}

impl QueueState {
    /// Queued runs may be waiting: look.
    pub(crate) fn wake(&self) {
        self.pending.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The node is stopping: no queued run is taken any more.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A slot of this node is free: look, if queued runs may be waiting.
    pub(crate) fn slot_freed(&self) {
        if self.pending.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }
}

impl Invocations {
    pub(crate) async fn serve_queue(self: Arc<Self>) {
        let mut queued = self.notifier.subscribe(QUEUED);
        loop {
            tokio::select! {
                _ = queued.changed() => self.queue.pending.store(true, Ordering::SeqCst),
                _ = self.queue.wake.notified() => {}
            }
            if !self.queue.pending.load(Ordering::SeqCst) {
                continue;
            }
            match self.take_queued().await {
                // Nothing left that this node may take: sleep until told otherwise.
                Ok(true) => self.queue.pending.store(false, Ordering::SeqCst),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not take queued runs"),
            }
        }
    }

    /// Take queued runs while this node has free slots. True when it looked at every queued
    /// run it may take (none is left for it); false when it ran out of slots first.
    async fn take_queued(self: &Arc<Self>) -> EngineResult<bool> {
        if self.queue.is_stopping() {
            return Ok(true);
        }
        let stale_before = now_ms() - self.node.config.lease.as_millis() as i64;
        // False once a function had runs left that this node had no slot for.
        let mut looked_at_all = true;
        'groups: for group in self.store.queued_groups().await? {
            if !self
                .may_take(&group.deployment_id, group.oldest_ms < stale_before)
                .await
            {
                continue;
            }
            let function_slots = self.function_slots(&group.project_name, &group.function_name);
            loop {
                let mut permits = Vec::new();
                while permits.len() < BATCH {
                    match Permits::try_take(&self.slots, function_slots.as_ref()) {
                        Some(p) => permits.push(p),
                        None => break,
                    }
                }
                if permits.is_empty() {
                    looked_at_all = false;
                    if self.slots.available_permits() == 0 {
                        // No slot at all: nothing more can be taken now.
                        return Ok(false);
                    }
                    // Only this function is at its limit here: the next may still run.
                    continue 'groups;
                }
                let wanted = permits.len();
                let epoch = self.node.epoch();
                let owner = self.node.owner_at(epoch);
                let ids = match self.cluster_limit() {
                    // No more than the function's free slots over the whole cluster.
                    Some(limit) => {
                        self.store
                            .claim_queued_within(
                                &group.deployment_id,
                                &group.project_name,
                                &group.function_name,
                                owner,
                                wanted as i64,
                                limit,
                            )
                            .await?
                    }
                    None => {
                        self.store
                            .claim_queued(
                                &group.deployment_id,
                                &group.function_name,
                                owner,
                                wanted as i64,
                            )
                            .await?
                    }
                };
                let taken = ids.len();
                for id in ids {
                    let Some(p) = permits.pop() else {
                        // More than asked for (never expected): back to the queue, not left
                        // running with nothing to run it.
                        tracing::error!(invocation = %id, "took more queued runs than slots; queueing it again");
                        self.store.unclaim(&id, owner).await?;
                        continue;
                    };
                    tracing::debug!(invocation = %id, "took a queued run");
                    self.spawn_run(
                        id,
                        Start {
                            record: None,
                            taken: Some((p, epoch)),
                        },
                    );
                }
                if taken < wanted {
                    break;
                }
            }
        }
        Ok(looked_at_all)
    }

    /// Whether this node takes runs of a deployment: one it has built (or built itself), or
    /// any once a run of it has waited longer than a lease (it is then built here).
    async fn may_take(&self, deployment_id: &str, stale: bool) -> bool {
        if stale || lock(&self.loaded).contains_key(deployment_id) {
            return true;
        }
        match self.store.get_deployment(deployment_id).await {
            Ok(dep) => dep.node_id.as_deref() == Some(self.node.id()),
            Err(_) => false,
        }
    }
}
