//! Resource limits for one devbox, on cgroup v1 or v2.
//!
//! The devbox's cgroups are created beside the server's own (v1: per controller;
//! v2: in the unified tree). The sandbox's first process joins them before it
//! execs, so nothing inside ever runs unlimited.
//!
//! This module creates cgroups, moves processes in and reads what they counted; `end`
//! kills what a cgroup holds and removes it or empties it for another use (and removes what
//! an earlier server left behind); `freezer` stops and resumes a cgroup's processes.

use std::ffi::CString;
use std::path::{Path, PathBuf};

mod end;
mod freezer;

pub use end::{leftover, leftovers, remove_leftovers, NotReusable};
pub use freezer::Freezer;

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// Relative CPU weight, 1 CPU = 1024 shares.
    pub cpu_shares: u64,
}

/// Cgroup v1 controllers a cgroup may join beside the limiting ones (memory, pids, cpu).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extras {
    /// `freezer`: the cgroup can be frozen ([`Cgroup::freezer`]).
    pub freezer: bool,
    /// `cpuacct`: the CPU time it used is counted ([`Cgroup::stats`]).
    pub cpu_time: bool,
}

/// The cgroup directories of one devbox. A handle: cloning it names the same cgroups, and
/// nothing happens to them until [`Cgroup::destroy`]. (A handle also holds where its use's
/// OOM count starts: see [`Cgroup::empty_for_reuse`].)
#[derive(Debug, Clone)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
    /// OOM kills counted before this use of the cgroup (see [`Cgroup::empty_for_reuse`]).
    oom_base: u64,
}

impl Cgroup {
    /// Create the devbox's cgroups and apply `limits`. Controllers that this host does not
    /// offer are skipped with a warning, never silently treated as enforced.
    pub fn create(name: &str, limits: Limits) -> std::io::Result<Cgroup> {
        Self::create_with(name, limits, Extras::default())
    }

    /// [`create`](Self::create), with the cgroup v1 controllers `extras` asks for beside the
    /// limiting ones (each one more cgroup to join, so only devboxes ask for them; v2 has both
    /// anyway).
    pub fn create_with(name: &str, limits: Limits, extras: Extras) -> std::io::Result<Cgroup> {
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            Self::create_v2(name, limits)
        } else {
            Self::create_v1(name, limits, extras)
        }
    }

    fn create_v1(name: &str, limits: Limits, extras: Extras) -> std::io::Result<Cgroup> {
        let own = own_paths()?;
        let mut dirs = Vec::new();
        let mut settings: Vec<(&str, Vec<(&str, String)>)> = vec![
            (
                "memory",
                vec![
                    ("memory.limit_in_bytes", limits.memory_bytes.to_string()),
                    ("memory.swappiness", "0".into()),
                ],
            ),
            ("pids", vec![("pids.max", limits.pids.to_string())]),
            ("cpu", vec![("cpu.shares", limits.cpu_shares.to_string())]),
        ];
        let cpu_time = extras.cpu_time;
        if cpu_time {
            // No limit: it counts the CPU time the devbox used (resource usage).
            settings.push(("cpuacct", Vec::new()));
        }
        if extras.freezer {
            // No limit: it stops the devbox's processes while its disk is snapshotted.
            settings.push(("freezer", Vec::new()));
        }
        for (controller, files) in settings {
            let base = Path::new(ROOT).join(controller);
            if controller == "cpuacct"
                && (!cpu_time || same_dir(&base, &Path::new(ROOT).join("cpu")))
            {
                // Not asked for, or mounted together with `cpu` (`cpu,cpuacct`): joined already.
                continue;
            }
            if !base.exists() {
                tracing::warn!(
                    controller,
                    "cgroup v1 controller missing; limit not enforced"
                );
                continue;
            }
            let parent = own
                .iter()
                .find(|(ctrls, _)| ctrls.split(',').any(|c| c == controller))
                .map(|(_, p)| p.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let dir = base.join(parent).join(format!("openloop-{name}"));
            std::fs::create_dir_all(&dir)?;
            for (file, value) in files {
                if let Err(e) = std::fs::write(dir.join(file), &value) {
                    if file != "memory.swappiness" {
                        let _ = std::fs::remove_dir(&dir);
                        return Err(e);
                    }
                }
            }
            dirs.push(dir);
        }
        Ok(Cgroup {
            dirs,
            v2: false,
            oom_base: 0,
        })
    }

    fn create_v2(name: &str, limits: Limits) -> std::io::Result<Cgroup> {
        let own = own_paths()?;
        let rel = own
            .iter()
            .find(|(ctrls, _)| ctrls.is_empty())
            .map(|(_, p)| p.trim_start_matches('/').to_string())
            .unwrap_or_default();
        let parent = Path::new(ROOT).join(rel);
        // Controllers must be enabled for the children of `parent`; where the host forbids it
        // (a parent with processes of its own), fall back to the root of the hierarchy we can write.
        let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
        let dir = parent.join(format!("openloop-{name}"));
        std::fs::create_dir_all(&dir)?;
        let weight = (limits.cpu_shares * 100 / 1024).clamp(1, 10_000);
        for (file, value) in [
            ("memory.max", limits.memory_bytes.to_string()),
            ("memory.swap.max", "0".to_string()),
            ("pids.max", limits.pids.to_string()),
            ("cpu.weight", weight.to_string()),
        ] {
            if let Err(e) = std::fs::write(dir.join(file), value) {
                tracing::warn!(file, error = %e, "cgroup v2 limit could not be set");
            }
        }
        Ok(Cgroup {
            dirs: vec![dir],
            v2: true,
            oom_base: 0,
        })
    }

    /// `cgroup.procs` paths as C strings, prepared before `fork` so the child can join
    /// without allocating.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// How many processes the kernel's OOM killer has killed inside this devbox (for a
    /// cgroup emptied for reuse, since then).
    pub fn oom_kills(&self) -> u64 {
        self.oom_count().unwrap_or(0).saturating_sub(self.oom_base)
    }

    /// The kernel's count of OOM kills in the cgroup, since it was made: 0 without a memory
    /// controller, `None` if its file cannot be read.
    fn oom_count(&self) -> Option<u64> {
        // Only the memory controller's directory has the count: the other v1 directories
        // are not asked (each miss is one more lookup in the cgroup file system, on the path
        // of every run's end and every devbox command).
        let (dir, file) = if self.v2 {
            (self.dirs.first(), "memory.events")
        } else {
            (self.controller_dir("memory"), "memory.oom_control")
        };
        let Some(dir) = dir else {
            return Some(0);
        };
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .filter_map(|n| n.trim().parse::<u64>().ok())
                .sum(),
        )
    }

    /// The memory charged to the cgroup now (its processes', and the page cache and kernel
    /// objects they left): `None` without a memory controller, `Some(None)` if its file
    /// cannot be read.
    pub(crate) fn memory_charged(&self) -> Option<Option<u64>> {
        let (dir, file) = if self.v2 {
            (self.dirs.first(), "memory.current")
        } else {
            (self.controller_dir("memory"), "memory.usage_in_bytes")
        };
        let dir = dir?;
        Some(
            std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|t| t.trim().parse().ok()),
        )
    }

    /// The directory of a v1 controller mounted on its own (`/sys/fs/cgroup/{controller}`).
    fn controller_dir(&self, controller: &str) -> Option<&PathBuf> {
        let base = Path::new(ROOT).join(controller);
        self.dirs.iter().find(|d| d.starts_with(&base))
    }

    /// What the devbox has used so far: CPU time, memory now and at its peak. A figure the
    /// host does not offer is `None`.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        let read =
            |d: &Path, f: &str| -> Option<String> { std::fs::read_to_string(d.join(f)).ok() };
        let number = |t: Option<String>| t.and_then(|t| t.trim().parse::<u64>().ok());
        for d in &self.dirs {
            if self.v2 {
                stats.cpu_usage_ns = read(d, "cpu.stat").and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|us| us * 1000)
                });
                stats.memory_bytes = number(read(d, "memory.current"));
                stats.memory_peak_bytes = number(read(d, "memory.peak"));
            } else {
                stats.cpu_usage_ns = stats.cpu_usage_ns.or(number(read(d, "cpuacct.usage")));
                stats.memory_bytes = stats
                    .memory_bytes
                    .or(number(read(d, "memory.usage_in_bytes")));
                stats.memory_peak_bytes = stats
                    .memory_peak_bytes
                    .or(number(read(d, "memory.max_usage_in_bytes")));
            }
        }
        stats
    }

    /// How many processes are in the cgroup.
    pub fn process_count(&self) -> usize {
        // A process is in every one of the directories (it is moved into each before it runs
        // anything, and what it starts inherits them): one is read, the `pids` controller's
        // where it has its own. Without it, the most any directory holds.
        match self.controller_dir("pids").filter(|_| !self.v2) {
            Some(d) => read_procs(d).len(),
            None => self
                .dirs
                .iter()
                .map(|d| read_procs(d).len())
                .max()
                .unwrap_or(0),
        }
    }

    /// Whether `pid` is in every one of these cgroups.
    pub fn holds(&self, pid: i32) -> bool {
        let want = pid.to_string();
        !self.dirs.is_empty()
            && self.dirs.iter().all(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .map(|t| t.lines().any(|l| l.trim() == want))
                    .unwrap_or(false)
            })
    }

    /// Move process `pid` into these cgroups.
    pub fn attach(&self, pid: i32) -> std::io::Result<()> {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }
}

/// What a devbox's cgroups have counted ([`Cgroup::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// CPU time used by every process the devbox ran, in nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// Memory in use now (page cache included), in bytes.
    pub memory_bytes: Option<u64>,
    /// The most memory in use at once so far, in bytes.
    pub memory_peak_bytes: Option<u64>,
}

/// Whether two paths name the same directory (one may be a symlink to the other).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The pids listed in a cgroup directory's `cgroup.procs` (empty when it is gone).
/// Whether this host's cgroups favour moving processes between them (`favordynmods` on any
/// cgroup mount; the kernel's lock for moving processes is one for every hierarchy).
///
/// Without it, moving a process into a cgroup (as every spare is moved into its run's) now
/// and then waits for an RCU grace period, and forks and exits anywhere wait behind it:
/// measured here on cgroup v1, 2.5% of moves took over 5 ms, up to 22 ms; with the option,
/// none over 2.7 ms. With it, every fork and exit takes that lock's slower, shared path.
pub fn favors_moves() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| favordynmods_in(&m))
}

/// Whether a cgroup mount in `mounts` (the format of `/proc/self/mounts`) has `favordynmods`.
fn favordynmods_in(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        matches!(f.get(2), Some(&"cgroup" | &"cgroup2"))
            && f.get(3)
                .is_some_and(|o| o.split(',').any(|o| o == "favordynmods"))
    })
}

fn read_procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Join the cgroups: called in the forked child before exec. Only raw syscalls.
///
/// # Safety
/// Must be called between fork and exec with paths prepared by [`Cgroup::procs_files`].
pub unsafe fn join_in_child(files: &[CString]) -> std::io::Result<()> {
    for f in files {
        let fd = libc::open(f.as_ptr(), libc::O_WRONLY);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // "0" means "the writing process".
        let n = libc::write(fd, b"0\n".as_ptr() as *const libc::c_void, 2);
        libc::close(fd);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `(controllers, path)` pairs from `/proc/self/cgroup`.
fn own_paths() -> std::io::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let ctrls = parts.next()?.to_string();
            let path = parts.next()?.to_string();
            Some((ctrls, path))
        })
        .collect())
}

/// Directories that hold this process's own cgroups, one per relevant controller.
fn parents() -> (Vec<PathBuf>, bool) {
    let v2 = Path::new(ROOT).join("cgroup.controllers").exists();
    let mut out = Vec::new();
    for (ctrls, p) in &own_paths().unwrap_or_default() {
        let bases: Vec<PathBuf> = if v2 {
            if ctrls.is_empty() {
                vec![PathBuf::from(ROOT)]
            } else {
                vec![]
            }
        } else {
            ctrls
                .split(',')
                .filter(|c| ["memory", "pids", "cpu", "cpuacct", "freezer"].contains(c))
                .map(|c| Path::new(ROOT).join(c))
                .collect()
        };
        for b in bases {
            out.push(b.join(p.trim_start_matches('/')));
        }
    }
    (out, v2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn favordynmods_is_found_on_cgroup_mounts_only() {
        let plain = "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
                     cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert!(!favordynmods_in(plain));
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,relatime,favordynmods 0 0\n";
        assert!(favordynmods_in(v2));
        let v1 = "cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids,favordynmods 0 0\n";
        assert!(favordynmods_in(v1));
        let elsewhere = "tmpfs /favordynmods tmpfs rw,favordynmods 0 0\n";
        assert!(!favordynmods_in(elsewhere));
    }
}
