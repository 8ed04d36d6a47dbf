//! Process handles that cannot hit the wrong process.
//!
//! A pid names a process only until it is reaped; after that the kernel may hand the number
//! to any new process, and `kill(pid)` would signal that stranger. A pidfd refers to one
//! process for as long as the descriptor is open: signalling it after the process has been
//! reaped fails with `ESRCH` instead of reaching whoever owns the number now.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pidfd (`pidfd_open(2)`).
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl Pidfd {
    /// Open a pidfd for `pid`. Sound only while `pid` cannot have been reaped and reused:
    /// for a child of ours that nothing has waited for yet (a zombie keeps its pid), or when
    /// the caller checks afterwards that the process is the one it meant (see
    /// [`crate::cgroup::Cgroup::kill_all`]).
    pub fn open(pid: i32) -> io::Result<Pidfd> {
        if pid <= 0 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: a plain syscall with integer arguments; the result is a new descriptor
        // that we own, or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor we just opened and nothing else owns.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Send `signal` to the process. `Ok(false)` when it has already exited and been reaped.
    pub fn signal(&self, signal: i32) -> io::Result<bool> {
        // SAFETY: the descriptor is open for the lifetime of `self`; no siginfo is passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            Ok(false)
        } else {
            Err(e)
        }
    }

    /// SIGKILL the process if it still exists; failures are logged (there is nothing else to do).
    pub fn kill(&self) {
        if let Err(e) = self.signal(libc::SIGKILL) {
            tracing::warn!(error = %e, "could not signal a process through its pidfd");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pidfd;

    #[test]
    fn a_reaped_process_is_never_signalled() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pidfd = Pidfd::open(child.id() as i32).expect("pidfd_open");
        assert!(pidfd.signal(0).expect("signal 0"));
        pidfd.kill();
        child.wait().expect("wait");
        // Reaped: the pid may belong to anyone now; the pidfd still means the old process.
        assert!(!pidfd.signal(libc::SIGKILL).expect("signal after reap"));
    }
}
