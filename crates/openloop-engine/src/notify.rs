//! "Something about X changed": one broadcast that waiting requests filter by key.
//!
//! Waiters subscribe *before* reading the current state, so no change is missed. In cluster
//! mode every key is also forwarded to the other nodes (`cluster::bus`), whose waiters and
//! live pages then read the new state from the shared database.

use std::sync::{Arc, OnceLock};
use tokio::sync::{broadcast, mpsc};

/// The key notified whenever any invocation is created or changes status (the dashboard's
/// live list listens to it; log lines do not notify it).
pub const ANY_INVOCATION: &str = "invocations";

/// The key notified whenever any deployment is created or changes status.
pub const ANY_DEPLOYMENT: &str = "deployments";

/// The key notified when a run was queued: a node with a free slot may take it.
pub const QUEUED: &str = "queue";

#[derive(Clone)]
pub struct Notifier {
    tx: broadcast::Sender<String>,
    /// The other nodes, in cluster mode.
    remote: Arc<OnceLock<mpsc::UnboundedSender<String>>>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier {
            tx: broadcast::channel(4096).0,
            remote: Arc::new(OnceLock::new()),
        }
    }
}

pub struct Subscription {
    rx: broadcast::Receiver<String>,
    key: String,
}

impl Notifier {
    pub fn notify(&self, key: &str) {
        let _ = self.tx.send(key.to_string());
        if let Some(remote) = self.remote.get() {
            let _ = remote.send(key.to_string());
        }
    }

    /// A change another node announced: told to this node's waiters only.
    pub fn notify_local(&self, key: &str) {
        let _ = self.tx.send(key.to_string());
    }

    /// From now on every key is also sent to `remote` (the cluster's bus).
    pub fn forward_to(&self, remote: mpsc::UnboundedSender<String>) {
        let _ = self.remote.set(remote);
    }

    /// An invocation was created or changed status: its waiters and the live lists.
    pub fn invocation_changed(&self, id: &str) {
        self.notify(id);
        self.notify(ANY_INVOCATION);
    }

    /// A deployment was created or changed status: its followers and the live lists.
    pub fn deployment_changed(&self, id: &str) {
        self.notify(id);
        self.notify(ANY_DEPLOYMENT);
    }

    pub fn subscribe(&self, key: &str) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
            key: key.to_string(),
        }
    }
}

impl Subscription {
    /// Wait until the key may have changed.
    pub async fn changed(&mut self) {
        loop {
            match self.rx.recv().await {
                Ok(k) if k == self.key => return,
                Ok(_) => continue,
                // Missed messages: the key may be among them.
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}
