//! A sandbox for running a deployment's Python code (its warm process, and the import that
//! reads its manifest): the host's system directories and the deployment's code and
//! environment read-only, a private writable scratch directory as `/tmp`, the host's network,
//! an unprivileged uid with no capabilities, and no view of the Openloop data directory, other
//! deployments or host processes.

use crate::{SANDBOX_HOST_UID, SANDBOX_UID};
use std::path::{Path, PathBuf};

/// What a Python sandbox sees.
#[derive(Debug, Clone)]
pub struct PythonSandbox {
    /// Directories bound read-only at the same path (the virtual environment, the code, sockets).
    pub read_only: Vec<PathBuf>,
    /// The private scratch directory, bound writable as `/tmp` (created and handed to the uid).
    pub scratch: PathBuf,
    /// The working directory inside.
    pub cwd: PathBuf,
}

/// System directories of the host that Python and its libraries need, read-only.
const SYSTEM: &[&str] = &["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"];

impl PythonSandbox {
    /// A `bwrap` command that runs `program args…` inside the sandbox. File descriptors the
    /// caller passes (for example a control socket as fd 3) stay open inside.
    pub fn command(&self, program: &Path) -> std::io::Result<tokio::process::Command> {
        std::fs::create_dir_all(&self.scratch)?;
        std::os::unix::fs::chown(
            &self.scratch,
            Some(SANDBOX_HOST_UID),
            Some(SANDBOX_HOST_UID),
        )?;
        let mut cmd = tokio::process::Command::new("bwrap");
        let uid = SANDBOX_UID.to_string();
        cmd.args([
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ])
        .args(["--uid", &uid, "--gid", &uid, "--hostname", "openloop-run"]);
        for dir in SYSTEM {
            if Path::new(dir).exists() {
                cmd.args(["--ro-bind", dir, dir]);
            }
        }
        cmd.args(["--proc", "/proc", "--dev", "/dev"]);
        cmd.arg("--bind").arg(&self.scratch).arg("/tmp");
        for dir in &self.read_only {
            cmd.arg("--ro-bind").arg(dir).arg(dir);
        }
        cmd.args([
            "--die-with-parent",
            "--cap-drop",
            "ALL",
            "--setenv",
            "HOME",
            "/tmp",
        ])
        .arg("--chdir")
        .arg(&self.cwd)
        .arg("--")
        .arg(program);
        let host_uid = SANDBOX_HOST_UID;
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(host_uid) != 0
                    || libc::setuid(host_uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}
