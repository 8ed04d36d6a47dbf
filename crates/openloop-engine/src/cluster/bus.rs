//! The bus between nodes: this node's change notifications go out with `pg_notify` (batched,
//! several keys per message), the other nodes' come in through `LISTEN`.
//!
//! A message is the sending node's id, then one key per line. A key `cancel:<id>` asks the
//! node running that invocation to kill it; any other key is told to this node's waiters.

use crate::invocations::Invocations;
use crate::node::Node;
use openloop_store::nodes::Listener;
use openloop_store::Store;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The channel every node listens on.
pub(crate) const CHANNEL: &str = "openloop_events";
/// PostgreSQL refuses payloads of 8,000 bytes or more.
const MAX_PAYLOAD: usize = 7_000;
/// How long changes are gathered into one message.
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// The key asking a run's node to kill it.
pub(crate) const CANCEL_PREFIX: &str = "cancel:";

pub(super) fn start(invocations: Arc<Invocations>, url: String) {
    let (tx, rx) = mpsc::unbounded_channel();
    invocations.notifier.forward_to(tx);
    tokio::spawn(send(
        invocations.store.clone(),
        invocations.node.clone(),
        rx,
    ));
    tokio::spawn(receive(invocations, url));
}

async fn send(store: Store, node: Arc<Node>, mut rx: mpsc::UnboundedReceiver<String>) {
    let me = node.id().to_string();
    while let Some(first) = rx.recv().await {
        if node.peers() == 0 {
            // Alone: nobody to tell (a node that joins is counted at the next heartbeat;
            // until then its waiters read again every few seconds).
            continue;
        }
        // What else changes within a few milliseconds goes in the same message: under load
        // a run's changes (created, running, its logs, finished) share one `NOTIFY` with
        // other runs' instead of costing one each. Waiters on this node were told at once.
        tokio::time::sleep(BATCH_WINDOW).await;
        let mut payload = format!("{me}\n{first}");
        let mut seen = HashSet::from([first]);
        while payload.len() < MAX_PAYLOAD {
            match rx.try_recv() {
                Ok(key) => {
                    if seen.insert(key.clone()) {
                        payload.push('\n');
                        payload.push_str(&key);
                    }
                }
                Err(_) => break,
            }
        }
        if let Err(e) = store.pg_notify(CHANNEL, &payload).await {
            tracing::warn!(error = %e, "could not tell the other nodes about a change");
        }
    }
}

async fn receive(invocations: Arc<Invocations>, url: String) {
    let me = invocations.node.id().to_string();
    loop {
        let mut listener = match Listener::connect(&url, CHANNEL).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for the other nodes' changes; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            // Changes may have been missed while not listening: waiters read again (and
            // every waiter in a cluster reads again every few seconds anyway).
            invocations
                .notifier
                .notify_local(crate::notify::ANY_INVOCATION);
            invocations.queue.wake();
            loop {
                match listener.recv().await {
                    Ok(Some(payload)) => handle(&invocations, &me, &payload),
                    Ok(None) => {
                        tracing::warn!("the cluster's notification channel was lost; reconnecting");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the cluster's notification channel failed; reconnecting");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn handle(invocations: &Arc<Invocations>, me: &str, payload: &str) {
    let mut lines = payload.lines();
    if lines.next() == Some(me) {
        return;
    }
    for key in lines {
        if let Some(id) = key.strip_prefix(CANCEL_PREFIX) {
            let this = Arc::clone(invocations);
            let id = id.to_string();
            tokio::spawn(async move { this.kill_local(&id).await });
        } else {
            invocations.notifier.notify_local(key);
        }
    }
}
