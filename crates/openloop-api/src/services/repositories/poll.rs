//! Polling, for repositories whose host cannot reach this server: one task per connection
//! with `poll_seconds` runs `git ls-remote <url> refs/heads/<branch>` at that interval and
//! deploys the head when it differs from the last commit the connection deployed.
//!
//! Pollers start with the server (for every connection that has `poll_seconds`) and when a
//! connection is made; removing the connection stops its poller. A failed `ls-remote` is
//! logged (once per distinct error) and tried again at the next interval. Only polls that
//! deploy are recorded as deliveries (provider `poll`).

use super::{Provider, Repositories};
use openloop_deploy::source;
use openloop_store::repositories::RepositoryRecord;
use openloop_store::StoreError;
use openloop_sync::lock;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long one `git ls-remote` may take.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// A running poller; dropping it stops the task.
pub struct Poller {
    _stop: oneshot::Sender<()>,
}

impl Repositories {
    /// Start pollers for every connection that polls (at server start).
    pub async fn start_pollers(self: &Arc<Self>) -> crate::error::ApiResult<()> {
        for repo in self.store.list_repositories().await? {
            self.start_poller(&repo);
        }
        Ok(())
    }

    /// Start the connection's poller, if it polls (replacing one already running).
    pub(super) fn start_poller(self: &Arc<Self>, repo: &RepositoryRecord) {
        let Some(seconds) = repo.poll_seconds.filter(|s| *s > 0) else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        tokio::spawn(run(
            Arc::downgrade(self),
            repo.id.clone(),
            Duration::from_secs(seconds as u64),
            rx,
        ));
        lock(&self.pollers).insert(repo.id.clone(), Poller { _stop: tx });
    }

    pub(super) fn stop_poller(&self, id: &str) {
        lock(&self.pollers).remove(id);
    }

    /// One poll; false when the connection is gone (the poller then ends).
    async fn poll_once(&self, id: &str, last_error: &mut Option<String>) -> bool {
        let repo = match self.store.get_repository(id).await {
            Ok(r) => r,
            Err(StoreError::NotFound(_)) => return false,
            Err(e) => {
                tracing::warn!(repository = %id, error = %e, "polling: could not read the connection");
                return true;
            }
        };
        let head = match source::ls_remote(&repo.url, &repo.branch, LS_REMOTE_TIMEOUT).await {
            Ok(Some(h)) => h,
            Ok(None) => {
                let e = format!("the repository has no branch {}", repo.branch);
                note_failure(id, last_error, e);
                return true;
            }
            Err(e) => {
                note_failure(id, last_error, e.to_string());
                return true;
            }
        };
        if last_error.take().is_some() {
            tracing::info!(repository = %id, "polling: git ls-remote works again");
        }
        if repo.last_commit.as_deref() == Some(head.as_str()) {
            return true;
        }
        // Claimed in the database: a webhook or another server sharing it may have deployed
        // this head since it was read.
        match self.store.claim_repository_commit(id, &head).await {
            Ok(true) => {}
            Ok(false) => return true,
            Err(e) => {
                tracing::warn!(repository = %id, error = %e, "polling: could not claim the new head");
                return true;
            }
        }
        let git_ref = format!("refs/heads/{}", repo.branch);
        // A failure is logged and recorded as a `failed` delivery by `deploy`; that head is
        // not tried again (the next push is).
        let _ = self
            .deploy(&repo, Provider::Poll, None, &git_ref, &head)
            .await;
        true
    }
}

/// Log a polling failure when it is new (not at every interval while it lasts).
fn note_failure(id: &str, last: &mut Option<String>, error: String) {
    if last.as_deref() != Some(error.as_str()) {
        tracing::warn!(repository = %id, error = %error, "polling failed; trying again at the next interval");
    }
    *last = Some(error);
}

/// The poller's task: a poll at once, then one per interval, until `stop` fires or is
/// dropped, or the connection is gone.
async fn run(
    service: Weak<Repositories>,
    id: String,
    every: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let Some(service) = service.upgrade() else {
            return;
        };
        let go_on = tokio::select! {
            go_on = service.poll_once(&id, &mut last_error) => go_on,
            _ = &mut stop => return,
        };
        if !go_on {
            tracing::info!(repository = %id, "polling stopped: the connection is gone");
            return;
        }
    }
}
