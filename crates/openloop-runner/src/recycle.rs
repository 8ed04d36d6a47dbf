//! Run cgroups emptied for reuse: a warm process's next spares are moved into cgroups its
//! earlier runs emptied, rather than into new ones.
//!
//! Every run still has a cgroup of its own while it runs: one is kept here only once no
//! process is left in it (whatever a run left behind is killed and has exited, as when a
//! cgroup is removed), and a kept one goes to one spare. What is saved is making and removing
//! a cgroup per run: on cgroup v1 a directory per controller (memory, pids, cpu), its limits
//! written, and the kernel's work of taking each one down (measured here: about 0.4 ms of CPU
//! per run, with the work of moving the run's process in and its exit). A cgroup whose OOM
//! kills a run is kept with its count started afresh
//! ([`Cgroup::empty_for_reuse`]), and one left holding more than [`MAX_CHARGE`] of
//! memory (page cache the run read, files it left in a shared tmpfs) is removed instead, so a
//! run never starts with more than that already counted against its limit.

use openloop_sandbox::cgroup::{Cgroup, NotReusable};
use openloop_sync::lock;
use std::sync::{Arc, Mutex};

/// Emptied cgroups kept for one warm process's spares, at most (the warm process keeps six
/// spares; runs end about as often as spares are made).
pub(crate) const KEPT: usize = 16;

/// Memory still charged to an empty cgroup above which it is removed rather than kept.
pub(crate) const MAX_CHARGE: u64 = 4 << 20;

/// The emptied run cgroups of one warm process, all made with its runs' default limits.
pub(crate) struct Recycled {
    /// `None` once the warm process has ended: what comes back then is removed.
    kept: Mutex<Option<Vec<Cgroup>>>,
}

impl Default for Recycled {
    fn default() -> Self {
        Recycled {
            kept: Mutex::new(Some(Vec::new())),
        }
    }
}

impl Recycled {
    /// A kept cgroup, if there is one.
    pub(crate) fn take(&self) -> Option<Cgroup> {
        lock(&self.kept).as_mut().and_then(Vec::pop)
    }

    /// Empty `cgroup` and keep it, or remove it (the warm process has ended, enough are
    /// kept, or it cannot be emptied as [`Cgroup::empty_for_reuse`] requires). Blocking: it
    /// kills and waits for what is left in the cgroup.
    pub(crate) fn keep(&self, mut cgroup: Cgroup) {
        match cgroup.empty_for_reuse(MAX_CHARGE) {
            Ok(()) => {
                let mut kept = lock(&self.kept);
                if let Some(kept) = kept.as_mut().filter(|k| k.len() < KEPT) {
                    kept.push(cgroup);
                    return;
                }
            }
            // Killing for a few seconds did not empty it: more of it would not either.
            Err(NotReusable::Busy) => {
                if !cgroup.remove_if_empty() {
                    tracing::warn!(?cgroup, "run cgroup still busy after its end");
                }
                return;
            }
            Err(NotReusable::Unreadable | NotReusable::Charged(_)) => {}
        }
        cgroup.destroy();
    }

    /// [`keep`](Self::keep) each of `cgroups`, off the async threads.
    pub(crate) fn keep_later(self: &Arc<Self>, cgroups: Vec<Cgroup>) {
        if cgroups.is_empty() {
            return;
        }
        let this = self.clone();
        crate::host::off_async_threads(move || cgroups.into_iter().for_each(|c| this.keep(c)));
    }

    /// [`keep`](Self::keep) `cgroup` on a blocking thread, and wait until it is empty.
    pub(crate) async fn keep_now(self: &Arc<Self>, cgroup: Cgroup) {
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || this.keep(cgroup)).await;
    }

    /// At the warm process's end: every kept cgroup, to remove; none is kept from now on.
    pub(crate) fn close(&self) -> Vec<Cgroup> {
        lock(&self.kept).take().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openloop_sandbox::cgroup::Limits;
    use std::process::Command;

    fn limits() -> Limits {
        Limits {
            memory_bytes: 64 << 20,
            pids: 16,
            cpu_shares: 1024,
        }
    }

    /// Root only (the test suite runs as root): real cgroups.
    #[test]
    fn an_emptied_cgroup_is_kept_for_the_next_spare_and_removed_after_the_end() {
        let name = format!("recycle-test-{}", std::process::id());
        let recycled = Recycled::default();
        let cgroup = Cgroup::create(&name, limits()).expect("creating a cgroup (run as root)");
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        cgroup.attach(child.id() as i32).unwrap();
        assert_eq!(cgroup.process_count(), 1);
        let dirs = cgroup.procs_files();

        // What the run left is killed before the cgroup is kept.
        recycled.keep(cgroup);
        let status = child.wait().unwrap();
        assert!(!status.success(), "the process left behind was killed");
        let again = recycled.take().expect("the emptied cgroup was kept");
        assert_eq!(again.procs_files(), dirs, "the same cgroup comes back");
        assert_eq!(again.process_count(), 0);
        assert!(recycled.take().is_none());

        // After the warm process's end, what comes back is removed.
        assert!(recycled.close().is_empty());
        recycled.keep(again);
        assert!(recycled.take().is_none());
        for f in &dirs {
            let dir = std::path::Path::new(f.to_str().unwrap()).parent().unwrap();
            assert!(!dir.exists(), "{dir:?} was removed");
        }
    }

    #[test]
    fn no_more_than_kept_are_kept() {
        let recycled = Recycled::default();
        let made: Vec<Cgroup> = (0..KEPT + 2)
            .map(|i| {
                Cgroup::create(&format!("recycle-cap-{}-{i}", std::process::id()), limits())
                    .expect("creating a cgroup (run as root)")
            })
            .collect();
        let dirs: Vec<_> = made.iter().map(|c| c.procs_files()).collect();
        for c in made {
            recycled.keep(c);
        }
        let kept = recycled.close();
        assert_eq!(kept.len(), KEPT);
        let removed = dirs
            .iter()
            .filter(|files| {
                files.iter().all(|f| {
                    !std::path::Path::new(f.to_str().unwrap())
                        .parent()
                        .unwrap()
                        .exists()
                })
            })
            .count();
        assert_eq!(removed, 2, "the ones beyond the limit were removed");
        kept.into_iter().for_each(|c| c.destroy());
    }
}
