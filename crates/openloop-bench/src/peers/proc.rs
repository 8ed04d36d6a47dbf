//! Peer processes: each started in a process group of its own, watched, and stopped with its
//! whole group when its guard drops; and the free loopback ports they listen on.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A peer's process, in a process group of its own; stopped with its whole group on drop.
pub(super) struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    exited: bool,
}

impl Proc {
    /// Start `cmd` with stderr (and stdout, unless `stdout` is given) going to `log`.
    pub(super) fn spawn(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
        stdout: Option<&Path>,
    ) -> Result<Proc> {
        let err = File::create(log)?;
        let out = match stdout {
            Some(p) => File::create(p)?,
            None => err.try_clone()?,
        };
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("the {name} peer could not be started: {cmd:?}"))?;
        Ok(Proc {
            name,
            child,
            log: log.to_path_buf(),
            exited: false,
        })
    }

    /// The exit status, if the process has ended.
    pub(super) fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let st = self.child.try_wait()?;
        self.exited |= st.is_some();
        Ok(st)
    }

    /// Fail, with the end of its log, if the process has ended.
    pub(super) fn check_running(&mut self) -> Result<()> {
        if let Some(st) = self.exit_status()? {
            bail!(
                "the {} peer exited ({st}); the end of its log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    pub(super) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn signal_group(&self, sig: i32) {
        // The group id is the leader's pid: while the leader is unreaped, or any member of its
        // group lives, no other process can be given that id.
        let pgid = self.child.id() as libc::pid_t;
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.exited {
            self.signal_group(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Whatever is left of its group (a worker's pool, a driver's clients).
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
