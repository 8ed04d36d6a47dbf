//! One devbox: overlay root + `bwrap` + the agent.

use crate::agent::{self, ExecOutput, OutputChunk};
use crate::cgroup::{self, Cgroup, Limits};
use crate::{SandboxError, SANDBOX_HOST_UID, SANDBOX_UID};
use openloop_agent_proto::Request;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};

/// Where devboxes live and what they are made of.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Parent of the per-devbox directories (upper layer, mount point, agent socket).
    pub devbox_dir: PathBuf,
    /// The ready base image (see [`crate::image`]).
    pub image: PathBuf,
    /// The `openloop-devbox-agent` binary, bound read-only into every devbox.
    pub agent_bin: PathBuf,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct DevboxSpec {
    /// Short id; names the directory and the cgroup.
    pub id: String,
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
}

/// A running devbox. Dropping it does not stop it; call [`Devbox::shutdown`].
#[derive(Debug)]
pub struct Devbox {
    pub id: String,
    dir: PathBuf,
    socket: PathBuf,
    env: BTreeMap<String, String>,
    cgroup: Cgroup,
    pid: i32,
    /// `None` while running; the reason once the sandbox has exited.
    exited: watch::Receiver<Option<String>>,
}

const AGENT_PATH: &str = "/opt/openloop/agent";

impl Devbox {
    pub async fn start(config: &SandboxConfig, spec: DevboxSpec) -> Result<Devbox, SandboxError> {
        let dir = config.devbox_dir.join(&spec.id);
        let start_err = |what: &str, e: std::io::Error| SandboxError::Start(format!("{what}: {e}"));
        for sub in ["upper", "work", "root", "run"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| start_err("creating the devbox directory", e))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| start_err("chmod", e))?;
        std::os::unix::fs::chown(
            dir.join("run"),
            Some(SANDBOX_HOST_UID),
            Some(SANDBOX_HOST_UID),
        )
        .map_err(|e| start_err("chown", e))?;
        mount_overlay(&config.image, &dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            start_err(
                "mounting the overlay root (is the server running as root?)",
                e,
            )
        })?;
        let cgroup = match Cgroup::create(&spec.id, spec.limits) {
            Ok(c) => c,
            Err(e) => {
                remove_dir(&dir);
                return Err(start_err("creating the devbox cgroups", e));
            }
        };
        match spawn(config, &spec, &dir, &cgroup).await {
            Ok((pid, exited)) => Ok(Devbox {
                id: spec.id,
                socket: dir.join("run/agent.sock"),
                dir,
                env: spec.env,
                cgroup,
                pid,
                exited,
            }),
            Err(e) => {
                cgroup.destroy();
                remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// Why the sandbox stopped, if it did.
    pub fn exit_reason(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    fn check_running(&self) -> Result<(), SandboxError> {
        match self.exit_reason() {
            Some(reason) => Err(SandboxError::NotRunning(reason)),
            None => Ok(()),
        }
    }

    /// Run `command` in bash; output beyond `max_output` bytes per stream is dropped from the result.
    pub async fn exec(
        &self,
        command: &str,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
        max_output: usize,
        live: Option<mpsc::UnboundedSender<OutputChunk>>,
    ) -> Result<ExecOutput, SandboxError> {
        self.check_running()?;
        let mut all_env = self.env.clone();
        all_env.extend(env);
        let req = Request::Exec {
            command: command.to_string(),
            env: all_env,
            cwd,
        };
        let result = agent::exec(&self.socket, req, max_output, live).await;
        if result.is_err() {
            self.check_running()?;
        }
        result
    }

    pub async fn read_file(&self, path: &str, max_bytes: usize) -> Result<Vec<u8>, SandboxError> {
        self.check_running()?;
        agent::read_file(&self.socket, path, max_bytes).await
    }

    pub async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), SandboxError> {
        self.check_running()?;
        agent::write_file(&self.socket, path, contents).await
    }

    pub async fn delete_file(&self, path: &str) -> Result<(), SandboxError> {
        self.check_running()?;
        agent::delete_file(&self.socket, path).await
    }

    /// Whether the kernel killed something in this devbox for using too much memory.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.oom_killed()
    }

    /// Kill everything in the devbox and remove its writable layer and cgroups.
    pub async fn shutdown(&self) {
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
        let mut exited = self.exited.clone();
        let _ = exited.wait_for(|r| r.is_some()).await;
        let dir = self.dir.clone();
        let id = self.id.clone();
        let _ = tokio::task::spawn_blocking(move || {
            cgroup::leftover(&id).destroy();
            remove_dir(&dir);
        })
        .await;
    }
}

async fn spawn(
    config: &SandboxConfig,
    spec: &DevboxSpec,
    dir: &Path,
    cgroup: &Cgroup,
) -> Result<(i32, watch::Receiver<Option<String>>), SandboxError> {
    let mut cmd = tokio::process::Command::new("bwrap");
    let uid = SANDBOX_UID.to_string();
    cmd.args([
        "--unshare-all",
        "--uid",
        &uid,
        "--gid",
        &uid,
        "--hostname",
        "devbox",
    ])
    .arg("--bind")
    .arg(dir.join("root"))
    .arg("/")
    .args(["--proc", "/proc", "--dev", "/dev"])
    .arg("--bind")
    .arg(dir.join("run"))
    .arg("/run/openloop")
    .arg("--ro-bind")
    .arg(&config.agent_bin)
    .arg(AGENT_PATH)
    .args(["--die-with-parent", "--new-session", "--cap-drop", "ALL"])
    .args(["--chdir", "/home/user", "--clearenv"])
    .args([
        "--setenv",
        "HOME",
        "/home/user",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
    ])
    .args(["--", AGENT_PATH, "/run/openloop/agent.sock"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(false);
    let procs: Vec<CString> = cgroup.procs_files();
    let host_uid = SANDBOX_HOST_UID;
    unsafe {
        cmd.pre_exec(move || {
            cgroup::join_in_child(&procs)?;
            // Drop to the unprivileged host uid before bwrap: the sandbox's user
            // namespace then maps to an account that owns nothing on the host.
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(host_uid) != 0
                || libc::setuid(host_uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        SandboxError::Start(format!(
            "could not run bwrap ({e}); install it with `apt-get install bubblewrap`"
        ))
    })?;
    let pid = child.id().map(|p| p as i32).unwrap_or(-1);
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.next_line().await;
    if !matches!(ready, Ok(Some(ref l)) if l == "READY") {
        let _ = child.start_kill();
        let _ = child.wait().await;
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        return Err(SandboxError::Start(format!(
            "the sandbox exited before its agent was ready: {}",
            err.trim()
        )));
    }
    let (tx, rx) = watch::channel(None);
    let id = spec.id.clone();
    tokio::spawn(async move {
        let mut err = String::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_string(&mut err).await;
        let status = child.wait().await;
        let reason = match status {
            Ok(s) => format!("the devbox's sandbox exited ({s})"),
            Err(e) => format!("the devbox's sandbox could not be waited for: {e}"),
        };
        tracing::debug!(devbox = %id, %reason, stderr = %err.trim(), "devbox sandbox ended");
        let _ = tx.send(Some(reason));
    });
    Ok((pid, rx))
}

fn mount_overlay(lower: &Path, dir: &Path) -> std::io::Result<()> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    let target = CString::new(dir.join("root").into_os_string().into_encoded_bytes())?;
    let opts = CString::new(opts)?;
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unmount a devbox root (if mounted) and delete its directory.
pub fn remove_dir(dir: &Path) {
    if let Ok(target) = CString::new(dir.join("root").into_os_string().into_encoded_bytes()) {
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove devbox directory");
        }
    }
}

/// Remove devboxes left by a previous server process: kill their processes, drop cgroups,
/// unmount and delete their directories. Returns the ids found.
pub fn clean_leftovers(devbox_dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    let Ok(entries) = std::fs::read_dir(devbox_dir) else {
        return ids;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().to_string();
        cgroup::leftover(&id).destroy();
        remove_dir(&e.path());
        ids.push(id);
    }
    ids
}
