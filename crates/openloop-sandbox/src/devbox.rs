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

/// The devbox's seccomp program, compiled once.
fn seccomp_program() -> &'static [u8] {
    static PROGRAM: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(|| crate::seccomp::Filter::new(crate::seccomp::Profile::Sandbox).to_bytes())
}

/// A sealed in-memory file holding `bytes`, read from its start (for `bwrap --seccomp`).
/// Not a pipe: bwrap reads to end-of-file, which a pipe would not give while another
/// child forked by the server meanwhile still held its write end.
fn memfd_with(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    use std::os::fd::FromRawFd;
    let fd = unsafe { libc::memfd_create(c"openloop-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

type Started = (Option<Pidfd>, watch::Receiver<Option<String>>, i32, OwnedFd);

async fn spawn(
    _config: &SandboxConfig,
    spec: &DevboxSpec,
    dir: &Path,
    cgroup: &Cgroup,
) -> Result<Started, SandboxError> {
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::Io(std::io::Error::last_os_error()));
    }
    let (info_r, info_w) = (fds[0], fds[1]);
    // The agent's control socket (fd 3 inside) and the seccomp program (fd 5 for bwrap).
    let (control, agent_end) = openloop_agent_proto::fdpass::control_pair()?;
    let seccomp = memfd_with(seccomp_program())?;
    let (agent_fd, seccomp_fd) = (agent_end.as_raw_fd(), seccomp.as_raw_fd());
    let mut cmd = tokio::process::Command::new("bwrap");
    // bwrap itself is the sandbox's first process: it sees nothing of the server's environment.
    cmd.env_clear();
    // A build, a root devbox or one with sudo enters the user namespace made for it (fd 6),
    // as its root, keeping the capabilities root has there; a devbox gets a namespace of its
    // own mapping `user`.
    let root_mode = spec.root || spec.sudo;
    let userns =
        match root_mode {
            true => Some(crate::build::build_namespace().map_err(|e| {
                SandboxError::Start(format!("making the build's user namespace: {e}"))
            })?),
            false => None,
        };
    let userns_fd = userns.as_ref().map(|u| u.as_raw_fd());
    let uid = match root_mode {
        true => "0".to_string(),
        false => SANDBOX_UID.to_string(),
    };
    match root_mode {
        true => cmd.args([
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--userns",
            "6",
        ]),
        false => cmd.args(["--unshare-all", "--unshare-user"]),
    };
    let (home, caps): (&str, &[&str]) = match (spec.root, spec.sudo) {
        (true, _) => ("/root", crate::build::BUILD_CAPS),
        (false, true) => ("/home/user", crate::build::BUILD_CAPS),
        (false, false) => ("/home/user", &[]),
    };
    cmd.args(["--uid", &uid, "--gid", &uid, "--hostname", "devbox"])
        .arg("--bind")
        .arg(dir.join("root"))
        .arg("/")
        .args(["--proc", "/proc", "--dev", "/dev"])
        .args(["--die-with-parent", "--new-session", "--cap-drop", "ALL"])
        .args(caps.iter().flat_map(|c| ["--cap-add", c]))
        // No user namespace can be made inside (and the seccomp filter refuses them too; bwrap
        // offers this only for namespaces it makes, not a build's, where the filter alone does).
        .args((!root_mode).then_some("--disable-userns"))
        .args(["--chdir", home, "--clearenv"])
        .args([
            "--setenv",
            "HOME",
            home,
            "--setenv",
            "PATH",
            "/usr/bin:/bin",
        ])
        .args(["--info-fd", "4", "--seccomp", "5"])
        .args(["--", AGENT_PATH, "--control-fd", "3"])
        .args(spec.sudo.then_some("--as-user"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let procs: Vec<CString> = cgroup.procs_files();
    let host_uid = match root_mode {
        true => crate::build::BUILD_HOST_UID,
        false => SANDBOX_HOST_UID,
    };
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears close-on-exec on the new descriptors.
            for (from, to) in [(agent_fd, 3), (info_w, 4), (seccomp_fd, 5)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = userns_fd {
                if libc::dup2(fd, 6) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
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
    let spawned = cmd.spawn();
    unsafe {
        libc::close(info_w);
    }
    drop(agent_end);
    drop(seccomp);
    drop(userns);
    let info = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(info_r) };
    let mut child = spawned.map_err(|e| {
        SandboxError::Start(format!(
            "could not run bwrap ({e}); install it with `apt-get install bubblewrap`"
        ))
    })?;
    // Opened before anything waits for the child, so it is bwrap's and nobody else's.
    let process = child.id().and_then(|p| Pidfd::open(p as i32).ok());
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
    // bwrap reports the pid of the sandbox's first process (in the host's pid namespace).
    let inner_pid = tokio::task::spawn_blocking(move || read_child_pid(info))
        .await
        .ok()
        .flatten()
        .unwrap_or(-1);
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
    Ok((process, rx, inner_pid, control))
}

fn read_child_pid(mut info: std::fs::File) -> Option<i32> {
    use std::io::Read;
    let mut text = Vec::new();
    let mut byte = [0u8; 1];
    while !text.ends_with(b"}") && text.len() < 4096 {
        match info.read(&mut byte) {
            Ok(1) => text.push(byte[0]),
            _ => break,
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v["child-pid"].as_i64().map(|p| p as i32)
}

/// A devbox's outbound network: slirp4netns, and the DNS filter of its policy's hostnames.
#[derive(Debug)]
struct Network {
    slirp: tokio::process::Child,
    names: Option<crate::dns::DnsFilter>,
}

/// Outbound network for the sandbox's network namespace: slirp4netns in user mode, with the
/// host's loopback refused, in its own sandbox and seccomp filter, inside the devbox's cgroup;
/// the egress rules of `policy` installed first.
async fn start_network(
    inner_pid: i32,
    cgroup: &Cgroup,
    policy: Option<crate::egress::EgressPolicy>,
) -> Result<Network, SandboxError> {
    let slirp = start_slirp(inner_pid, cgroup, policy.clone()).await?;
    let names =
        tokio::task::spawn_blocking(move || crate::egress::name_filter(inner_pid, policy.as_ref()))
            .await
            .map_err(|e| SandboxError::Start(e.to_string()))?
            .map_err(|e| SandboxError::Start(format!("the devbox's DNS filter: {e}")))?;
    Ok(Network { slirp, names })
}

async fn start_slirp(
    inner_pid: i32,
    cgroup: &Cgroup,
    policy: Option<crate::egress::EgressPolicy>,
) -> Result<tokio::process::Child, SandboxError> {
    if inner_pid <= 0 {
        return Err(SandboxError::Start(
            "bwrap did not report the sandbox's pid".into(),
        ));
    }
    // The egress rules are in the namespace before it has any way out.
    tokio::task::spawn_blocking(move || crate::egress::apply_rules(inner_pid, policy.as_ref()))
        .await
        .map_err(|e| SandboxError::Start(e.to_string()))?
        .map_err(|e| SandboxError::Start(format!("the devbox's egress rules: {e}")))?;
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::Io(std::io::Error::last_os_error()));
    }
    let (ready_r, ready_w) = (fds[0], fds[1]);
    let userns = owning_userns(inner_pid).map_err(|e| {
        SandboxError::Start(format!("cannot open the sandbox's network namespace: {e}"))
    })?;
    let userns_fd = std::os::fd::AsRawFd::as_raw_fd(&userns);
    // bwrap nests a second user namespace; the network namespace belongs to the outer one.
    let mut cmd =
        tokio::process::Command::from(crate::egress::slirp_command(inner_pid, "/proc/self/fd/4"));
    cmd.kill_on_drop(true);
    let procs = cgroup.procs_files();
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(ready_w, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(userns_fd, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            cgroup::join_in_child(&procs)?;
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(userns);
    unsafe {
        libc::close(ready_w);
    }
    let ready = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(ready_r) };
    let mut child = spawned.map_err(|e| {
        SandboxError::Start(format!(
            "could not run slirp4netns ({e}); install it with `apt-get install slirp4netns`"
        ))
    })?;
    let ok = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut b = [0u8; 1];
        matches!((&ready).read(&mut b), Ok(1))
    })
    .await
    .unwrap_or(false);
    if !ok {
        let _ = child.start_kill();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err).await;
        }
        return Err(SandboxError::Start(format!(
            "the devbox network did not come up (sandbox pid {inner_pid}): {}",
            err.trim()
        )));
    }
    Ok(child)
}

/// The user namespace that owns the network namespace of `pid` (`NS_GET_USERNS`).
fn owning_userns(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    let net = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let fd = unsafe { libc::ioctl(net.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Put the agent binary into `layer` at `opt/openloop/agent`, a read-only layer stacked over
/// the base image of every devbox (so no host path is bound into a devbox).
pub fn prepare_agent_layer(agent_bin: &Path, layer: &Path) -> std::io::Result<()> {
    let target = layer.join("opt/openloop/agent");
    let wanted = std::fs::read(agent_bin)?;
    if std::fs::read(&target).ok().as_deref() == Some(&wanted[..]) {
        return link_sudo(layer);
    }
    std::fs::create_dir_all(layer.join("opt/openloop"))?;
    for d in [
        layer.to_path_buf(),
        layer.join("opt"),
        layer.join("opt/openloop"),
    ] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    }
    let tmp = layer.join("opt/openloop/.agent.new");
    std::fs::write(&tmp, &wanted)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &target)?;
    link_sudo(layer)
}

/// `usr/bin/sudo` in the agent layer: the agent under that name (see the agent's `sudo`
/// module; without `--devbox-sudo` it says sudo is not available and fails).
fn link_sudo(layer: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(layer.join("usr/bin"))?;
    for d in [layer.join("usr"), layer.join("usr/bin")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    }
    let sudo = layer.join("usr/bin/sudo");
    if std::fs::read_link(&sudo).ok().as_deref() != Some(Path::new(AGENT_PATH)) {
        let _ = std::fs::remove_file(&sudo);
        std::os::unix::fs::symlink(AGENT_PATH, &sudo)?;
    }
    Ok(())
}

/// The read-only layers under a devbox's own upper layer, top first.
struct Layers<'a> {
    agent: &'a Path,
    snapshot: Option<&'a Path>,
    image: &'a Path,
}

/// Mount the devbox's root: its upper layer over the agent layer over a snapshot's layer
/// (if any) over the image. The agent layer is above the snapshot so that no snapshot can
/// shadow the agent. The layers are named by descriptors (`/proc/self/fd/N`), so the
/// devbox's mount table, which shows these options, names no host path. `redirect_dir` and
/// `metacopy` are off so that an upper layer holds whole files and plain directories, and
/// can itself become a snapshot's layer.
/// A build's lower layers are idmapped mounts instead (`idmapped`, see [`crate::build`]).
fn mount_overlay(layers: &Layers<'_>, dir: &Path, idmapped: bool) -> std::io::Result<()> {
    let open = |p: &Path| -> std::io::Result<OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(p)
            .map(OwnedFd::from)
    };
    let mut paths = vec![layers.agent];
    paths.extend(layers.snapshot);
    paths.push(layers.image);
    let lower: Vec<OwnedFd> = match idmapped {
        true => crate::build::idmapped_layers(&paths)?,
        false => paths
            .into_iter()
            .map(open)
            .collect::<std::io::Result<_>>()?,
    };
    let upper = open(&dir.join("disk/upper"))?;
    let work = open(&dir.join("disk/work"))?;
    let fd = |f: &OwnedFd| format!("/proc/self/fd/{}", f.as_raw_fd());
    let lowerdir: Vec<String> = lower.iter().map(fd).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off",
        lowerdir.join(":"),
        fd(&upper),
        fd(&work)
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

/// Unmount a devbox's root and then its disk, keeping the directory (and the disk image).
/// A plain unmount is tried first (a few times: the sandbox's mount namespace may be
/// released a moment after its processes), so the disk is really detached, not only hidden.
pub fn unmount(dir: &Path) {
    for mount_point in ["root", "disk"] {
        let Ok(target) = CString::new(dir.join(mount_point).into_os_string().into_encoded_bytes())
        else {
            continue;
        };
        for attempt in 0..50 {
            if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            // EINVAL: not a mount point (any more).
            if err.raw_os_error() == Some(libc::EINVAL) || err.raw_os_error() == Some(libc::ENOENT)
            {
                break;
            }
            if attempt == 49 {
                tracing::warn!(dir = %dir.display(), mount_point, error = %err, "devbox mount still busy; detaching it");
                unsafe {
                    libc::umount2(target.as_ptr(), libc::MNT_DETACH);
                }
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Unmount a devbox root (if mounted) and delete its directory.
pub fn remove_dir(dir: &Path) {
    for mount_point in ["root", "disk"] {
        if let Ok(target) =
            CString::new(dir.join(mount_point).into_os_string().into_encoded_bytes())
        {
            unsafe {
                // The loop device of the disk is released with its last mount (autoclear).
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
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
    clean_leftovers_except(devbox_dir, &std::collections::HashSet::new())
}

/// Like [`clean_leftovers`], but the directories of `keep` (suspended devboxes) are only
/// unmounted: their disk images stay for a later resume. Returns the ids removed.
pub fn clean_leftovers_except(
    devbox_dir: &Path,
    keep: &std::collections::HashSet<String>,
) -> Vec<String> {
    let mut ids = Vec::new();
    let Ok(entries) = std::fs::read_dir(devbox_dir) else {
        return ids;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().to_string();
        cgroup::leftover(&id).destroy();
        if keep.contains(&id) {
            unmount(&e.path());
            continue;
        }
        remove_dir(&e.path());
        ids.push(id);
    }
    ids
}
