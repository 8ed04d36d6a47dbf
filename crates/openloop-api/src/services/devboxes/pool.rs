//! Sandboxes of the default shape started ahead of time, so that creating a devbox takes one.

use super::*;

/// How long after the last create took a warm sandbox the pool waits before refilling.
const REFILL_PAUSE: Duration = Duration::from_millis(20);
/// The longest a refill waits for such a pause in a steady stream of creates.
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
                let Some(this) = weak.upgrade() else { return };
                this.pause_after_takes().await;
            }
        });
    }
    /// Wait until no create has taken a warm sandbox for [`REFILL_PAUSE`] (at most
    /// [`REFILL_MAX_WAIT`]): starting a sandbox costs tens of milliseconds of CPU, and on a
    /// small machine it would compete with the devbox just created (its first commands) and
    /// with the next creates of a burst.
    async fn pause_after_takes(&self) {
        let began = std::time::Instant::now();
        loop {
            let since = lock(&self.warm_taken_at).map(|t| t.elapsed());
            let left = match since {
                Some(since) if since < REFILL_PAUSE => REFILL_PAUSE - since,
                _ => return,
            };
            let waited = began.elapsed();
            if waited >= REFILL_MAX_WAIT {
                return;
            }
            tokio::time::sleep(left.min(REFILL_MAX_WAIT - waited)).await;
        }
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
        *lock(&self.warm_taken_at) = Some(std::time::Instant::now());
        self.warm_refill.notify_one();
        taken
    }
}
