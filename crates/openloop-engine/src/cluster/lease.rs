//! The lease: this node's heartbeat, taking over nodes whose lease expired, and what a node
//! does when it finds that its own lease was taken over.
//!
//! Each tick (a fifth of the lease) also repairs what a failure may have left: runs still
//! `running` under a node that stopped or was lost, or under an older epoch of its node (a
//! takeover or a shutdown cut short), are cut short; runs of this node canceled on another
//! node are killed (a cancel on the bus may have been lost); cancel marks for runs that never
//! came here are dropped.

use crate::invocations::{Invocations, Running};
use crate::recovery::CutShort;
use crate::EngineResult;
use openloop_store::now_ms;
use openloop_sync::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a cancel's mark waits for a run that may still come to this node.
const MARK_KEPT: Duration = Duration::from_secs(60);

impl Invocations {
    /// Renew the lease every fifth of it; in cluster mode, take over lost nodes.
    pub(crate) async fn keep_lease(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.node.heartbeat_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One round of takeovers and repairs at a time, off the heartbeat's path: a long
        // one must not make this node miss its own lease.
        let busy = Arc::new(AtomicBool::new(false));
        loop {
            tick.tick().await;
            match self
                .store
                .heartbeat(self.node.id(), self.node.epoch())
                .await
            {
                Ok(true) => {}
                Ok(false) => self.lease_lost().await,
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew this node's lease");
                    // Without its own lease renewed, a node does not judge others'.
                    continue;
                }
            }
            if !self.node.clustered() || self.queue.is_stopping() {
                continue;
            }
            let cutoff = now_ms() - self.node.config.lease.as_millis() as i64;
            match self.store.active_nodes_since(cutoff).await {
                Ok(n) => self.node.set_peers(n.saturating_sub(1)),
                Err(e) => tracing::warn!(error = %e, "could not count the cluster's nodes"),
            }
            if !busy.swap(true, Ordering::SeqCst) {
                let this = Arc::clone(&self);
                let busy = busy.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.take_over_expired().await {
                        tracing::warn!(error = %e, "could not check for lost nodes");
                    }
                    if let Err(e) = this.repair().await {
                        tracing::warn!(error = %e, "could not check for stranded runs");
                    }
                    busy.store(false, Ordering::SeqCst);
                });
            }
            // Runs waiting longer than a lease for a deployment no live node has built.
            self.queue.wake();
        }
    }

    /// Take over every other node whose last heartbeat is older than a lease.
    async fn take_over_expired(&self) -> EngineResult<()> {
        let cutoff = now_ms() - self.node.config.lease.as_millis() as i64;
        for lost in self.store.expired_nodes(self.node.id(), cutoff).await? {
            // One node wins each takeover; the others see `None`.
            let Some(epoch) = self
                .store
                .take_over_node(&lost, self.node.id(), cutoff)
                .await?
            else {
                continue;
            };
            let started = std::time::Instant::now();
            // Its runs under the lost epoch (not those of a later one, if it rejoined).
            let runs = self.store.runs_owned_by(&lost, epoch).await?;
            let count = runs.len();
            let message = format!(
                "node {lost} stopped heartbeating while this invocation ran on it (lost machine or process); invoke it again (or mark the function retryable)"
            );
            let requeued = self
                .cut_short(
                    runs,
                    CutShort {
                        kind: "NodeLost",
                        message: &message,
                    },
                )
                .await?;
            let devboxes = self
                .store
                .lose_devboxes_of_node(
                    &lost,
                    &format!("node {lost} was lost (it stopped heartbeating); the devbox's sandbox was on it"),
                )
                .await?;
            for id in &devboxes {
                self.notifier.notify(id);
            }
            tracing::warn!(
                node = %lost,
                runs = count,
                requeued = requeued.len(),
                devboxes = devboxes.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "took over a lost node"
            );
        }
        Ok(())
    }

    /// Cut short runs stranded under a node that no longer runs them, kill this node's runs
    /// canceled elsewhere, and drop stale cancel marks.
    async fn repair(&self) -> EngineResult<()> {
        let lease_ago = now_ms() - self.node.config.lease.as_millis() as i64;
        let stranded = self.store.stranded_runs(self.node.id(), lease_ago).await?;
        if !stranded.is_empty() {
            tracing::warn!(
                count = stranded.len(),
                "cutting short runs left running by nodes that stopped or lost their lease"
            );
            self.cut_short(
                stranded,
                CutShort {
                    kind: "NodeLost",
                    message: "the node running this invocation stopped or lost its lease before recording its end; invoke it again (or mark the function retryable)",
                },
            )
            .await?;
        }
        let since = now_ms() - 2 * self.node.config.lease.as_millis() as i64;
        for id in self
            .store
            .canceled_runs_of_node(self.node.id(), since)
            .await?
        {
            let here = matches!(lock(&self.running).get(&id), Some(Running::Host(_)));
            if here {
                self.kill_local(&id).await;
            }
        }
        lock(&self.running).retain(|_, r| match r {
            Running::CanceledEarly(at) => at.elapsed() < MARK_KEPT,
            Running::Host(_) => true,
        });
        Ok(())
    }

    /// This node's lease is no longer its own: another node took its runs over (failed or
    /// re-ran them). Nothing it still runs may finish: every run is killed (their outcomes
    /// would be refused anyway, see `Store::finish_run`), its devboxes are shut down, and it
    /// rejoins under a new epoch.
    async fn lease_lost(&self) {
        tracing::error!(node = %self.node.id(), epoch = self.node.epoch(), "this node's lease was taken over by another node (it missed heartbeats); stopping its runs and devboxes and rejoining");
        let hosts: Vec<(String, Arc<openloop_runner::WarmHost>)> = lock(&self.running)
            .iter()
            .filter_map(|(id, r)| match r {
                Running::Host(h) => Some((id.clone(), h.clone())),
                Running::CanceledEarly(_) => None,
            })
            .collect();
        for (id, host) in hosts {
            let _ = host.kill(&id).await;
        }
        self.ports.devboxes.shutdown_all_local().await;
        match self
            .store
            .join_cluster(self.node.id(), &self.node.config.address)
            .await
        {
            Ok(epoch) => {
                self.node.set_epoch(epoch);
                tracing::info!(node = %self.node.id(), epoch, "rejoined the cluster");
            }
            Err(e) => tracing::error!(error = %e, "could not rejoin the cluster"),
        }
    }
}
