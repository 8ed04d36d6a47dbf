//! Ending a cgroup: killing what it holds, removing its directories or emptying them for
//! another use, and the cgroups a previous server left behind.

use super::{parents, read_procs, Cgroup};
use crate::pidfd::Pidfd;

impl Cgroup {
    /// Send SIGKILL to every process in the cgroups, again while new ones appear (a fork
    /// bomb may start new ones while the first are killed). Returns the pidfds of the
    /// processes it signalled: each becomes readable once its process has exited.
    ///
    /// Never by bare pid: a pid read from `cgroup.procs` may exit and be reaped (by its
    /// parent in the cgroup) before the signal is sent, and the number reused by a process
    /// outside. On cgroup v2 the kernel kills the whole cgroup itself (`cgroup.kill`, which
    /// also catches processes forked meanwhile). Else each pid is first pinned with a pidfd,
    /// then `cgroup.procs` is read again: a pid still listed there after its pidfd was opened
    /// is a member (a stranger that took a reused number is not in our cgroup; a member that
    /// took it is ours to kill anyway), and the pidfd still names the process it was opened
    /// for, so the signal cannot go elsewhere. A process already signalled is not signalled
    /// again (SIGKILL cannot be caught; it is only slow to die while the kernel tears down
    /// its memory), so a dying process costs one pass, not a busy loop.
    pub fn kill_all(&self) -> Vec<Pidfd> {
        let mut killed: std::collections::HashMap<i32, Pidfd> = std::collections::HashMap::new();
        for _ in 0..100 {
            let mut new = false;
            for d in &self.dirs {
                if self.v2 && std::fs::write(d.join("cgroup.kill"), "1").is_ok() {
                    continue;
                }
                let pinned: Vec<(i32, Pidfd)> = read_procs(d)
                    .into_iter()
                    // Signalled already, and still that process (not reaped, its number reused).
                    .filter(|pid| {
                        !killed
                            .get(pid)
                            .is_some_and(|fd| fd.signal(0).unwrap_or(false))
                    })
                    .filter_map(|pid| Some((pid, Pidfd::open(pid).ok()?)))
                    .collect();
                if pinned.is_empty() {
                    continue;
                }
                let members = read_procs(d);
                for (pid, fd) in pinned {
                    if members.contains(&pid) {
                        new = true;
                        fd.kill();
                        killed.insert(pid, fd);
                    }
                }
            }
            if !new {
                break;
            }
            std::thread::yield_now();
        }
        killed.into_values().collect()
    }

    /// Kill every process left in the cgroups and remove them, waiting (on their pidfds,
    /// not by polling the cgroup) for the killed processes to exit.
    pub fn destroy(&self) {
        // Most often nothing is left (a run's process has exited by then): removing the
        // directories is then all there is to do, without reading their members. The kernel
        // refuses to remove a cgroup that still holds a process; those are killed below.
        if !self.kill_until(Self::remove_if_empty) {
            tracing::warn!(dirs = ?self.dirs, "cgroup still busy after shutdown");
        }
    }

    /// Empty the cgroups for another use instead of removing them: kill what they hold and
    /// wait until it has exited, as [`destroy`](Self::destroy) does, then count OOM kills
    /// afresh ([`oom_kills`](Self::oom_kills) is 0 again, on this handle: a clone made before
    /// keeps counting from the earlier base). The limits stay as they were made.
    ///
    /// Refused (remove the cgroup then) if a process is still in it after a few seconds, if
    /// one of its files cannot be read (a directory removed meanwhile, say), or if more than
    /// `max_charge` bytes of memory stay charged to it once it is empty: the page cache and
    /// kernel objects its processes left, which a removed cgroup hands to its parent and a
    /// reused one would count against its next processes' limit.
    ///
    /// Reusing a cgroup saves creating and removing one per use: on cgroup v1 that is one
    /// directory per controller, and the kernel's work to take each one down.
    pub fn empty_for_reuse(&mut self, max_charge: u64) -> Result<(), NotReusable> {
        if !self.kill_until(Self::is_empty) {
            return Err(if self.dirs.iter().all(|d| d.exists()) {
                NotReusable::Busy
            } else {
                NotReusable::Unreadable
            });
        }
        match self.memory_charged() {
            Some(Some(bytes)) if bytes > max_charge => return Err(NotReusable::Charged(bytes)),
            Some(None) => return Err(NotReusable::Unreadable),
            _ => {}
        }
        self.oom_base = self.oom_count().ok_or(NotReusable::Unreadable)?;
        Ok(())
    }

    /// Whether no process is in any of the directories (a directory whose members cannot be
    /// read is not taken for empty).
    fn is_empty(&self) -> bool {
        self.dirs.iter().all(|d| {
            std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|t| t.trim().is_empty())
        })
    }

    /// Kill what the cgroups hold, and again, until `done` (checked first: most often it
    /// holds nothing by then), for at most about five seconds; whether `done` held.
    fn kill_until(&self, done: fn(&Self) -> bool) -> bool {
        if done(self) {
            return true;
        }
        // A frozen process (cgroup v1) dies only once thawed.
        if let Some(f) = self.freezer() {
            let _ = f.thaw();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let killed = self.kill_all();
            wait_exited(&killed, std::time::Duration::from_millis(500));
            if done(self) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            // Still populated: a process exiting that was signalled by someone else, or one
            // that joined meanwhile. Look again shortly.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Remove every directory still there, without killing anything; whether none is left
    /// (one that still holds a process stays).
    pub fn remove_if_empty(&self) -> bool {
        let mut left = false;
        for d in &self.dirs {
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => left = true,
            }
        }
        !left
    }
}

/// Why a cgroup was not emptied for reuse ([`Cgroup::empty_for_reuse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReusable {
    /// A process was still in it after a few seconds of killing.
    Busy,
    /// One of its files could not be read.
    Unreadable,
    /// This many bytes of memory stayed charged to it.
    Charged(u64),
}

/// Wait until every process behind `fds` has exited (its pidfd is readable), at most `limit`.
fn wait_exited(fds: &[Pidfd], limit: std::time::Duration) {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + limit;
    let mut pending: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        // SAFETY: `pending` is a valid array of pollfd for the duration of the call, and the
        // descriptors stay open (borrowed from `fds`).
        let n = unsafe {
            libc::poll(
                pending.as_mut_ptr(),
                pending.len() as libc::nfds_t,
                left.as_millis().clamp(1, i32::MAX as u128) as i32,
            )
        };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
        pending.retain(|p| p.revents == 0);
        for p in &mut pending {
            p.revents = 0;
        }
    }
}

/// Every cgroup whose name starts with `openloop-{prefix}`, in every hierarchy, as one
/// [`Cgroup`] (its [`procs_files`](Cgroup::procs_files) name one per directory found).
pub fn leftovers(prefix: &str) -> Cgroup {
    let (parents, v2) = parents();
    let want = format!("openloop-{prefix}");
    let mut dirs = Vec::new();
    for parent in parents {
        for e in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&want) {
                dirs.push(e.path());
            }
        }
    }
    Cgroup {
        dirs,
        v2,
        oom_base: 0,
    }
}

/// Remove every cgroup whose name starts with `openloop-{prefix}` (after a crash, and at a
/// graceful stop), killing what runs in them; how many directories there were.
pub fn remove_leftovers(prefix: &str) -> usize {
    let found = leftovers(prefix);
    let n = found.dirs.len();
    found.destroy();
    n
}

/// The cgroups of a devbox left behind by a previous server process (after a crash).
pub fn leftover(name: &str) -> Cgroup {
    let (parents, v2) = parents();
    let dirs = parents
        .into_iter()
        .map(|p| p.join(format!("openloop-{name}")))
        .filter(|d| d.exists())
        .collect();
    Cgroup {
        dirs,
        v2,
        oom_base: 0,
    }
}
