//! The lease: this node's heartbeat, taking over nodes whose lease expired, and what a node
//! does when it finds that its own lease was taken over.

use crate::invocations::{Invocations, Running};
use crate::recovery::CutShort;
use crate::EngineResult;
use openloop_store::now_ms;
use openloop_sync::lock;
use std::sync::Arc;

impl Invocations {
    /// Renew the lease every fifth of it; in cluster mode, take over lost nodes.
    pub(crate) async fn keep_lease(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.node.heartbeat_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self
                .store
                .heartbeat(self.node.id(), self.node.epoch())
                .await
            {
                Ok(true) => {}
                Ok(false) => self.lease_lost().await,
                Err(e) => tracing::warn!(error = %e, "could not renew this node's lease"),
            }
            if !self.node.clustered() {
                continue;
            }
            if let Err(e) = self.take_over_expired().await {
                tracing::warn!(error = %e, "could not check for lost nodes");
            }
            // Runs waiting longer than a lease for a deployment no live node has built.
            self.queue.wake();
        }
    }

    /// Take over every other node whose last heartbeat is older than a lease.
    async fn take_over_expired(&self) -> EngineResult<()> {
        let cutoff = now_ms() - self.node.config.lease.as_millis() as i64;
        for lost in self.store.expired_nodes(self.node.id(), cutoff).await? {
            // One node wins each takeover; the others see `false`.
            if !self
                .store
                .take_over_node(&lost, self.node.id(), cutoff)
                .await?
            {
                continue;
            }
            let started = std::time::Instant::now();
            let runs = self.store.runs_owned_by(&lost).await?;
            let count = runs.len();
            let message = format!(
                "node {lost} stopped heartbeating while this invocation ran on it (lost machine or process); invoke it again (or mark the function retryable)"
            );
            let requeued = self
                .cut_short(
                    runs,
                    CutShort {
                        node: &lost,
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
                Running::CanceledEarly => None,
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
