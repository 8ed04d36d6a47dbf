//! Sandboxes of the default shape started ahead of time, so that creating a devbox takes one.

use super::*;

/// A pause in creates this long lets the warm pool refill.
const REFILL_PAUSE: Duration = Duration::from_millis(20);
/// The refill waits for a pause at most this long.
const REFILL_MAX_WAIT: Duration = Duration::from_millis(150);

impl Devboxes {
    /// The resources of a devbox that asks for nothing in particular.
    pub(super) fn default_resources(&self) -> Option<Resources> {
        self.resources(&CreateDevbox::default()).ok()
    }
    /// Keep `devbox_warm_pool` sandboxes of the default shape started, so that creating a
    /// devbox costs a database write instead of a sandbox start.
    pub fn start_warm_pool(self: &Arc<Self>) {
        let want = self.config.devbox_warm_pool;
        if want == 0 {
            return;
        }
        let weak = Arc::downgrade(self);
        let refill = self.warm_refill.clone();
        tokio::spawn(async move {
            loop {
                let Some(this) = weak.upgrade() else { return };
                let Some(res) = this.default_resources() else {
                    return;
                };
                while lock(&this.warm).len() < want {
                    let spec = DevboxSpec {
                        id: openloop_store::new_id("dbx"),
                        env: BTreeMap::new(),
                        limits: res.limits,
                        disk_bytes: res.disk_bytes,
                        network: false,
                        egress: None,
                        lower: None,
                        root: false,
                        sudo: this.config.devbox_sudo,
                    };
                    match this.start_sandbox(spec).await {
                        Ok(d) => {
                            lock(&this.warm).push_back(d);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not start a devbox ahead of time");
                            break;
                        }
                    }
                }
                drop(this);
                refill.notified().await;
                // Creates come in bursts: refill once they pause (no take for 20 ms, at most
                // 150 ms), so starting sandboxes does not compete with the creates and their
                // first commands.
                let waited = std::time::Instant::now();
                while waited.elapsed() < REFILL_MAX_WAIT {
                    if tokio::time::timeout(REFILL_PAUSE, refill.notified())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
    }
    pub(super) fn take_warm(&self, res: &Resources) -> Option<Arc<Devbox>> {
        let default = self.default_resources()?;
        let same = !res.network
            && !res.root
            && res.disk_bytes == default.disk_bytes
            && res.limits.memory_bytes == default.limits.memory_bytes
            && res.limits.pids == default.limits.pids
            && res.limits.cpu_shares == default.limits.cpu_shares;
        if !same {
            return None;
        }
        let mut taken = None;
        {
            let mut w = lock(&self.warm);
            while let Some(d) = w.pop_front() {
                if d.exit_reason().is_none() {
                    taken = Some(d);
                    break;
                }
            }
        }
        self.warm_refill.notify_one();
        taken
    }
}
