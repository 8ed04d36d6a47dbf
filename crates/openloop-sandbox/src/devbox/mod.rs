//! One devbox: overlay root + `bwrap` + the agent.

use crate::agent::{self, AgentLink, ExecOutput, OutputChunk};
use crate::cgroup::{self, Cgroup, Limits};
use crate::disk;
use crate::pidfd::Pidfd;
use crate::{SandboxError, SANDBOX_HOST_UID, SANDBOX_UID};
use openloop_agent_proto::Request;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};

mod launch;
mod layers;
mod network;

use launch::*;
use network::*;

pub use layers::{
    clean_leftovers, clean_leftovers_except, prepare_agent_layer, remove_dir, unmount,
};
use layers::{mount_overlay, Layers};

/// Where devboxes live and what they are made of.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Parent of the per-devbox directories (disk, upper layer, mount point).
    pub devbox_dir: PathBuf,
    /// The ready base image (see [`crate::image`]).
    pub image: PathBuf,
    /// A read-only layer holding the agent at `/opt/openloop/agent`, stacked over the
    /// image (see [`prepare_agent_layer`]).
    pub agent_layer: PathBuf,
    /// Disks formatted ahead of time, so creating a devbox does not wait for `mkfs`.
    pub pool: Option<std::sync::Arc<disk::DiskPool>>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct DevboxSpec {
    /// Short id; names the directory and the cgroup.
    pub id: String,
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    /// Size of the devbox's writable disk; writes past it fail with ENOSPC inside the devbox.
    pub disk_bytes: u64,
    /// Outbound network through slirp4netns (never the host's loopback); otherwise none.
    pub network: bool,
    /// Where outbound traffic may go (the default egress rules when `None`).
    pub egress: Option<crate::egress::EgressPolicy>,
    /// A disk snapshot's layer (see [`crate::snapshot`]), stacked read-only between the
    /// devbox's own upper layer and the agent layer over the image; shared by every devbox
    /// started from it.
    pub lower: Option<PathBuf>,
    /// Commands run as root of the sandbox's own user namespace, over idmapped layers (see
    /// [`crate::build`]): blueprint builds, and devboxes whose user is root.
    pub root: bool,
    /// The devbox user may run commands as root with `sudo`: the sandbox is a root one (as
    /// with `root`), but its agent serves every request as the user and runs `sudo`'s
    /// commands as root (`openloop-devbox-agent --as-user`).
    pub sudo: bool,
}

/// A running devbox. Dropping it does not stop it; call [`Devbox::shutdown`].
#[derive(Debug)]
pub struct Devbox {
    pub id: String,
    pub(crate) dir: PathBuf,
    /// The snapshot layer under its own upper layer, if it was started from one.
    pub(crate) lower: Option<PathBuf>,
    agent: AgentLink,
    env: std::sync::RwLock<BTreeMap<String, String>>,
    /// Where commands start when they name no directory (`/home/user` if `None`).
    workdir: std::sync::RwLock<Option<String>>,
    pub(crate) cgroup: Cgroup,
    /// The `bwrap` process (a pidfd: it is reaped by its waiting task, after which its pid
    /// may belong to anyone). `None` if it could not be opened (the sandbox had died).
    process: Option<Pidfd>,
    /// The outbound network, if any.
    network: tokio::sync::Mutex<Option<Network>>,
    /// `None` while running; the reason once the sandbox has exited.
    exited: watch::Receiver<Option<String>>,
}

const AGENT_PATH: &str = "/opt/openloop/agent";

impl Devbox {
    pub async fn start(config: &SandboxConfig, spec: DevboxSpec) -> Result<Devbox, SandboxError> {
        let dir = config.devbox_dir.join(&spec.id);
        let start_err = |what: &str, e: std::io::Error| SandboxError::Start(format!("{what}: {e}"));
        let pooled = config.pool.as_ref().and_then(|p| p.take(spec.disk_bytes));
        if let Some(ready) = &pooled {
            std::fs::create_dir_all(&config.devbox_dir)
                .map_err(|e| start_err("creating the devbox directory", e))?;
            std::fs::rename(ready, &dir).map_err(|e| start_err("taking a prepared disk", e))?;
        }
        for sub in ["disk", "root"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| start_err("creating the devbox directory", e))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| start_err("chmod", e))?;
        if pooled.is_some() {
            // The disk came formatted and mounted.
        } else if let Err(e) = disk::make_disk(&dir, spec.disk_bytes).await {
            remove_dir(&dir);
            return Err(start_err(
                "creating the devbox disk (needs root, e2fsprogs and loop devices)",
                e,
            ));
        }
        Self::boot(config, spec, dir, false).await
    }

    /// Start a suspended devbox again (see [`Devbox::suspend`]): its kept disk image is
    /// mounted again, with its files, and a fresh sandbox starts over it. On failure the disk
    /// is kept (unmounted), so resuming can be tried again.
    pub async fn resume(config: &SandboxConfig, spec: DevboxSpec) -> Result<Devbox, SandboxError> {
        let dir = config.devbox_dir.join(&spec.id);
        let start_err = |what: &str, e: std::io::Error| SandboxError::Start(format!("{what}: {e}"));
        if !dir.join(disk::IMAGE).exists() {
            return Err(SandboxError::Start(
                "the suspended devbox's disk image is gone; shut it down and create a new devbox"
                    .into(),
            ));
        }
        for sub in ["disk", "root"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| start_err("creating the devbox directory", e))?;
        }
        disk::mount_disk(&dir)
            .await
            .map_err(|e| start_err("mounting the devbox's disk again", e))?;
        Self::boot(config, spec, dir, true).await
    }

    /// Mount the overlay root, create the cgroups, start the sandbox and its network. On
    /// failure everything is undone: the directory removed, or (`keep_disk`) only unmounted.
    async fn boot(
        config: &SandboxConfig,
        spec: DevboxSpec,
        dir: PathBuf,
        keep_disk: bool,
    ) -> Result<Devbox, SandboxError> {
        let start_err = |what: &str, e: std::io::Error| SandboxError::Start(format!("{what}: {e}"));
        let undo = |dir: &Path| {
            if keep_disk {
                unmount(dir);
            } else {
                remove_dir(dir);
            }
        };
        let layers = Layers {
            agent: &config.agent_layer,
            snapshot: spec.lower.as_deref(),
            image: &config.image,
        };
        let mounted = match spec.root || spec.sudo {
            true => crate::build::own_upper(&dir.join("disk/upper"))
                .and_then(|_| mount_overlay(&layers, &dir, true)),
            false => mount_overlay(&layers, &dir, false),
        };
        mounted.map_err(|e| {
            undo(&dir);
            start_err(
                "mounting the overlay root (is the server running as root?)",
                e,
            )
        })?;
        // Devboxes are snapshotted (frozen meanwhile) and report the CPU time they used.
        let extras = crate::cgroup::Extras {
            freezer: true,
            cpu_time: true,
        };
        let cgroup = match Cgroup::create_with(&spec.id, spec.limits, extras) {
            Ok(c) => c,
            Err(e) => {
                undo(&dir);
                return Err(start_err("creating the devbox cgroups", e));
            }
        };
        let started = match spawn(config, &spec, &dir, &cgroup).await {
            Ok(s) => s,
            Err(e) => {
                cgroup.destroy();
                undo(&dir);
                return Err(e);
            }
        };
        let (process, exited, inner_pid, control) = started;
        let network = if spec.network {
            match start_network(inner_pid, &cgroup, spec.egress.clone()).await {
                Ok(child) => Some(child),
                Err(e) => {
                    if let Some(p) = &process {
                        p.kill();
                    }
                    cgroup.destroy();
                    undo(&dir);
                    return Err(e);
                }
            }
        } else {
            None
        };
        Ok(Devbox {
            network: tokio::sync::Mutex::new(network),
            id: spec.id,
            agent: AgentLink::new(control),
            dir,
            lower: spec.lower,
            env: std::sync::RwLock::new(spec.env),
            workdir: std::sync::RwLock::new(None),
            cgroup,
            process,
            exited,
        })
    }

    /// Why the sandbox stopped, if it did.
    pub fn exit_reason(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    /// Set the environment every later command starts with (for a devbox started ahead of
    /// time and handed out later).
    pub fn set_env(&self, env: BTreeMap<String, String>) {
        if let Ok(mut e) = self.env.write() {
            *e = env;
        }
    }

    /// Set where commands start when they name no directory (a blueprint's `WORKDIR`).
    pub fn set_workdir(&self, dir: Option<String>) {
        if let Ok(mut w) = self.workdir.write() {
            *w = dir;
        }
    }

    /// Wait until the sandbox has exited, for whatever reason; returns the reason.
    pub async fn exited(&self) -> String {
        let mut rx = self.exited.clone();
        let result = rx.wait_for(|r| r.is_some()).await;
        match result {
            Ok(r) => r.clone().unwrap_or_default(),
            Err(_) => "the sandbox is gone".into(),
        }
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
        self.exec_attached(command, env, cwd, max_output, live, None)
            .await
    }

    /// [`exec`](Self::exec) with a standard input fed by `stdin` (a pipe; `/dev/null` without).
    pub async fn exec_attached(
        &self,
        command: &str,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
        max_output: usize,
        live: Option<mpsc::UnboundedSender<OutputChunk>>,
        stdin: Option<mpsc::Receiver<agent::StdinMessage>>,
    ) -> Result<ExecOutput, SandboxError> {
        self.check_running()?;
        let mut all_env = self.env.read().map(|e| e.clone()).unwrap_or_default();
        all_env.extend(env);
        let cwd = cwd.or_else(|| self.workdir.read().ok().and_then(|w| w.clone()));
        let req = Request::Exec {
            command: command.to_string(),
            env: all_env,
            cwd,
            stdin: stdin.is_some(),
        };
        let result = agent::exec(&self.agent, req, max_output, live, stdin).await;
        if result.is_err() {
            self.check_running()?;
        }
        result
    }

    /// A raw connection to `127.0.0.1:port` inside the devbox, made by its agent (tunnels).
    pub async fn connect_port(&self, port: u16) -> Result<tokio::net::UnixStream, SandboxError> {
        self.check_running()?;
        agent::connect_port(&self.agent, port).await
    }

    pub async fn read_file(&self, path: &str, max_bytes: usize) -> Result<Vec<u8>, SandboxError> {
        self.check_running()?;
        agent::read_file(&self.agent, path, max_bytes).await
    }

    pub async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), SandboxError> {
        self.check_running()?;
        agent::write_file(&self.agent, path, contents).await
    }

    pub async fn delete_file(&self, path: &str) -> Result<(), SandboxError> {
        self.check_running()?;
        agent::delete_file(&self.agent, path).await
    }

    /// Start writing a file in chunks (for uploads).
    pub async fn upload(&self, path: &str) -> Result<agent::FileWriter, SandboxError> {
        self.check_running()?;
        agent::FileWriter::open(&self.agent, path).await
    }

    /// Start reading a file in chunks (for downloads).
    pub async fn download(&self, path: &str) -> Result<agent::FileReader, SandboxError> {
        self.check_running()?;
        agent::FileReader::open(&self.agent, path).await
    }

    /// What the devbox has used: CPU time and memory from its cgroups, its disk's use.
    pub fn usage(&self) -> Usage {
        let cgroup = self.cgroup.stats();
        let disk = statvfs(&self.dir.join("disk"));
        Usage {
            cpu_usage_ns: cgroup.cpu_usage_ns,
            memory_bytes: cgroup.memory_bytes,
            memory_peak_bytes: cgroup.memory_peak_bytes,
            disk_used_bytes: disk.map(|(used, _)| used),
            disk_size_bytes: disk.map(|(_, size)| size),
        }
    }

    /// Whether the kernel killed something in this devbox for using too much memory.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.oom_kills() > 0
    }

    /// How many processes were killed in this devbox for using too much memory.
    pub fn oom_kills(&self) -> u64 {
        self.cgroup.oom_kills()
    }

    /// Kill everything in the devbox and remove its writable layer and cgroups.
    pub async fn shutdown(&self) {
        self.halt().await;
        let dir = self.dir.clone();
        let id = self.id.clone();
        let _ = tokio::task::spawn_blocking(move || {
            cgroup::leftover(&id).destroy();
            remove_dir(&dir);
        })
        .await;
    }

    /// Suspend the devbox: kill every process in it and remove its cgroups (its memory is
    /// freed), but keep its disk image, unmounted, for [`Devbox::resume`].
    pub async fn suspend(&self) -> Result<(), SandboxError> {
        self.halt().await;
        let dir = self.dir.clone();
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || {
            cgroup::leftover(&id).destroy();
            unmount(&dir);
        })
        .await
        .map_err(|e| SandboxError::Start(e.to_string()))
    }

    /// Kill the sandbox and its network, and wait until it has exited.
    pub(crate) async fn halt(&self) {
        if let Some(p) = &self.process {
            p.kill();
        }
        if let Some(mut net) = self.network.lock().await.take() {
            let _ = net.slirp.kill().await;
            // Stopping the name filter waits for its thread.
            let _ = tokio::task::spawn_blocking(move || drop(net.names)).await;
        }
        let mut exited = self.exited.clone();
        let _ = exited.wait_for(|r| r.is_some()).await;
    }
}

/// A devbox's resource use so far ([`Devbox::usage`]); a figure the host does not offer is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time of everything the devbox ran, in nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// Memory in use now, in bytes.
    pub memory_bytes: Option<u64>,
    /// The most memory in use at once, in bytes.
    pub memory_peak_bytes: Option<u64>,
    /// Bytes used on the devbox's own disk (what it wrote over the base image).
    pub disk_used_bytes: Option<u64>,
    /// The size of the devbox's disk, in bytes.
    pub disk_size_bytes: Option<u64>,
}

/// `(used, size)` in bytes of the file system mounted at `path`.
fn statvfs(path: &Path) -> Option<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    let size = st.f_blocks as u64 * frsize;
    let free = st.f_bfree as u64 * frsize;
    Some((size.saturating_sub(free), size))
}
