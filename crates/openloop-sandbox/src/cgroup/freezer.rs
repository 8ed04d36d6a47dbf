//! Freezing a cgroup's processes where they stand (while a devbox's disk is snapshotted).

use super::Cgroup;
use std::path::PathBuf;

impl Cgroup {
    /// The handle that freezes this cgroup, if it can be frozen (see [`Freezer`]).
    pub fn freezer(&self) -> Option<Freezer> {
        let dir = if self.v2 {
            self.dirs.first()
        } else {
            self.controller_dir("freezer")
        }?;
        Some(Freezer {
            dir: dir.clone(),
            v2: self.v2,
        })
    }
}

/// Freezes and thaws one cgroup (v2 `cgroup.freeze`, v1 `freezer.state`).
#[derive(Debug, Clone)]
pub struct Freezer {
    dir: PathBuf,
    v2: bool,
}

impl Freezer {
    /// Stop every process in the cgroup where it stands (none can run, fork or write until
    /// [`Freezer::thaw`]); returns once the kernel reports the whole cgroup frozen, or an
    /// error (thawed again) when it does not freeze within `within`.
    ///
    /// The kernel gives no notification for v1's `freezer.state` (and v2's `cgroup.events`
    /// only to a poller), so this reads the state again with a short back-off.
    pub fn freeze(&self, within: std::time::Duration) -> std::io::Result<()> {
        let (file, value) = if self.v2 {
            ("cgroup.freeze", "1")
        } else {
            ("freezer.state", "FROZEN")
        };
        std::fs::write(self.dir.join(file), value)?;
        let deadline = std::time::Instant::now() + within;
        let mut pause = std::time::Duration::from_micros(200);
        loop {
            let frozen = if self.v2 {
                std::fs::read_to_string(self.dir.join("cgroup.events"))?
                    .lines()
                    .any(|l| l.trim() == "frozen 1")
            } else {
                std::fs::read_to_string(self.dir.join("freezer.state"))?.trim() == "FROZEN"
            };
            if frozen {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.thaw();
                return Err(std::io::Error::other(
                    "the devbox's processes did not freeze in time",
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(20));
        }
    }

    /// Let the cgroup run again (nothing when it was not frozen).
    pub fn thaw(&self) -> std::io::Result<()> {
        if self.v2 {
            std::fs::write(self.dir.join("cgroup.freeze"), "0")
        } else {
            std::fs::write(self.dir.join("freezer.state"), "THAWED")
        }
    }
}
