//! This node: its id, the address other nodes reach it at, and its lease epoch.
//!
//! Every node, the single node on SQLite included, has a row in `nodes` and an epoch that
//! grows at each start. A run records the node and epoch it was taken under, and its outcome
//! is recorded only under the same pair (`Store::finish_run`): after a restart the runs of
//! the previous epoch are recovered, and a node whose lease another node took over finishes
//! nothing of what it ran.

use openloop_store::invocations::Owner;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

/// How a node is configured.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Stable across restarts (kept in the data directory unless given).
    pub id: String,
    /// Where other nodes reach this node's API (`http://host:port`).
    pub address: String,
    /// How long a node may go without a heartbeat before another takes over its work.
    pub lease: Duration,
    /// The PostgreSQL URL when this node is part of a cluster (the database is PostgreSQL):
    /// the bus listens on it. `None` on SQLite, where one node is all there is.
    pub cluster_database_url: Option<String>,
}

/// This node, as the engine runs it.
#[derive(Debug)]
pub struct Node {
    pub config: NodeConfig,
    epoch: AtomicI64,
    /// Other active nodes, as of the last heartbeat (nothing goes on the bus while there are
    /// none: a cluster of one pays nothing for it).
    peers: AtomicUsize,
}

impl Node {
    pub(crate) fn new(config: NodeConfig, epoch: i64) -> Self {
        Node {
            config,
            epoch: AtomicI64::new(epoch),
            peers: AtomicUsize::new(0),
        }
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The current lease epoch.
    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// How many other nodes were active at the last heartbeat.
    pub fn peers(&self) -> usize {
        self.peers.load(Ordering::SeqCst)
    }

    pub(crate) fn set_peers(&self, n: usize) {
        self.peers.store(n, Ordering::SeqCst)
    }

    pub(crate) fn set_epoch(&self, epoch: i64) {
        self.epoch.store(epoch, Ordering::SeqCst)
    }

    /// This node under its current epoch, as a run taken now records it.
    pub fn owner(&self) -> Owner<'_> {
        self.owner_at(self.epoch())
    }

    pub fn owner_at(&self, epoch: i64) -> Owner<'_> {
        Owner {
            node: &self.config.id,
            epoch,
        }
    }

    /// Whether other nodes share the database (cluster mode).
    pub fn clustered(&self) -> bool {
        self.config.cluster_database_url.is_some()
    }

    /// How often the lease is renewed: five times per lease.
    pub fn heartbeat_every(&self) -> Duration {
        (self.config.lease / 5).max(Duration::from_millis(200))
    }
}
