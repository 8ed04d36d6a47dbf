//! Canceling a run (and what it started, all the way down), and waiting for one to finish.

use crate::invocations::{Invocations, Running};
use crate::{EngineError, EngineResult};
use openloop_store::invocations::Invocation;
use openloop_sync::lock;
use std::time::Instant;

/// How often a waiter in a cluster reads an invocation again without a notice.
const CLUSTER_REREAD: std::time::Duration = std::time::Duration::from_secs(5);

impl Invocations {
    /// Cancel a queued or running invocation: its process tree is killed, its devboxes shut
    /// down, and its status becomes `canceled`.
    pub async fn cancel(&self, id: &str) -> EngineResult<Invocation> {
        let inv = self.store.get_invocation(id).await?;
        if inv.is_finished() {
            return Err(EngineError::Conflict(format!(
                "invocation {id} has already finished ({}); there is nothing to cancel",
                inv.status
            )));
        }
        // Read before the run can end: what it started goes with it.
        let slots = self.run_slots(id);
        let children = slots.as_ref().map(|r| r.children()).unwrap_or_default();
        // Its slots go back now, and a wait of it in progress does not take them again: its
        // process is being killed, and another run may have them.
        if let Some(r) = &slots {
            r.end();
        }
        let err = serde_json::json!({"type": "Canceled", "message": "the invocation was canceled", "traceback": null});
        self.store
            .finish_invocation(id, "canceled", None, Some(&err.to_string()))
            .await?;
        let host = {
            let mut running = lock(&self.running);
            match running.get(id) {
                Some(Running::Host(h)) => Some(h.clone()),
                _ => {
                    // Not started here (yet): if it comes here, it never starts.
                    running.insert(id.to_string(), Running::CanceledEarly(Instant::now()));
                    None
                }
            }
        };
        match host {
            Some(h) => {
                if let Err(e) = h.kill(id).await {
                    tracing::warn!(invocation = %id, error = %e, "could not kill the canceled run");
                }
            }
            // It may run on another node: that node kills it (`cluster::bus`).
            None if self.node.clustered() => self
                .notifier
                .notify(&format!("{}{id}", crate::cluster::CANCEL_PREFIX)),
            None => {}
        }
        self.ports.devboxes.shutdown_for_invocation(id).await?;
        self.notifier.invocation_changed(id);
        self.cancel_children(id, children).await;
        Ok(self.store.get_invocation(id).await?)
    }

    /// Wait until an invocation has finished, then return it.
    pub async fn wait_finished(&self, id: &str) -> EngineResult<Invocation> {
        let mut sub = self.notifier.subscribe(id);
        loop {
            let inv = self.store.get_invocation(id).await?;
            if inv.is_finished() {
                return Ok(inv);
            }
            if self.node.clustered() {
                // Another node's notice may be lost with its connection: read again now
                // and then.
                let _ = tokio::time::timeout(CLUSTER_REREAD, sub.changed()).await;
            } else {
                sub.changed().await;
            }
        }
    }

    /// Kill a run of this node that another node canceled (it is recorded `canceled`), and
    /// cancel what it started. A run taken but not yet started never starts.
    pub(crate) async fn kill_local(&self, id: &str) {
        let children = self.run_slots(id).map(|r| r.children()).unwrap_or_default();
        let host = {
            let mut running = lock(&self.running);
            match running.get(id) {
                Some(Running::Host(h)) => Some(h.clone()),
                Some(Running::CanceledEarly(_)) => return,
                None => {
                    running.insert(id.to_string(), Running::CanceledEarly(Instant::now()));
                    None
                }
            }
        };
        if let Some(h) = host {
            if let Err(e) = h.kill(id).await {
                tracing::warn!(invocation = %id, error = %e, "could not kill a run canceled on another node");
            }
        }
        self.cancel_children(id, children).await;
    }

    /// Wait until `id` has finished, on behalf of a caller (`caller_run`: the run calling, if
    /// a run is). A run hands its slots back for the wait and takes them again before it goes
    /// on: the invocation it waits on may need them.
    pub async fn wait_for(&self, caller_run: Option<&str>, id: &str) -> EngineResult<Invocation> {
        let Some((caller, run)) = caller_run.and_then(|c| self.run_slots(c).map(|r| (c, r))) else {
            return self.wait_finished(id).await;
        };
        let held = run.holds_slots();
        let wait = run.wait();
        if held {
            // In a cluster, the function's slot is lent in the database as well.
            self.lend_in_cluster(caller, &run).await?;
        }
        let done = self.wait_finished(id).await;
        wait.resume().await;
        self.take_back_in_cluster(caller, &run).await?;
        done
    }

    /// Cancel what a canceled run started and has not finished, all the way down.
    async fn cancel_children(&self, parent: &str, children: Vec<String>) {
        for child in children {
            match Box::pin(self.cancel(&child)).await {
                Ok(_) | Err(EngineError::Conflict(_)) => {}
                Err(e) => {
                    tracing::warn!(invocation = %child, parent, error = %e, "could not cancel the child of a canceled run");
                }
            }
        }
    }
}
