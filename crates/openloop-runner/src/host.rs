//! The warm Python process of one deployment.

use crate::spares::Spares;
use crate::RunnerError;
use openloop_sandbox::cgroup::{Cgroup, Limits};
use openloop_sandbox::jail::{JailFile, SeccompProfile};
use openloop_sandbox::pidfd::Pidfd;
use openloop_sandbox::python::{PythonSandbox, RUN_SECCOMP};
use openloop_sandbox::seccomp::{Filter, Profile};
use openloop_sync::lock;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{oneshot, watch};

/// What to start. Paths are as the process sees them, inside its sandbox.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub deployment_id: String,
    /// The environment's interpreter, `<venv>/bin/python`.
    pub python: PathBuf,
    /// The directory to put on `sys.path`.
    pub module_dir: PathBuf,
    pub module_name: String,
    /// The engine socket runs connect their streams to.
    pub engine_socket: PathBuf,
    /// Size of each run's own `/tmp` (a tmpfs, counted in the run's memory).
    pub run_tmp_bytes: u64,
    /// The sandbox the process runs in (its working directory, binds and environment).
    pub sandbox: PythonSandbox,
    /// The cgroup the process (its import, validators and spare children) runs in.
    pub cgroup_name: String,
    pub limits: Limits,
    /// Runs' cgroups: names start with this, and the default limits. The process forked for
    /// the next run registers on the engine socket as soon as it is isolated and is moved
    /// into a fresh one of these then, off the run's path (moving a process between v1
    /// cgroups can take milliseconds).
    pub run_cgroup_prefix: String,
    pub run_limits: Limits,
}

/// One schema violation, as pydantic reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// How a run's process ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

pub struct WarmHost {
    pub spec: HostSpec,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    next_id: AtomicU64,
    replies: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    exits: Mutex<HashMap<String, oneshot::Sender<ExitInfo>>>,
    /// Runs killed here (see [`WarmHost::was_killed`]).
    killed: Mutex<Killed>,
    /// Set with the reason once the process has stopped.
    dead: watch::Receiver<Option<String>>,
    /// For logs only; signals go through `process`.
    pid: i32,
    /// The warm process, as a pidfd (`None` if it had already died when opened).
    process: Option<Pidfd>,
    /// The process's own cgroup; removed when the host is dropped.
    cgroup: Mutex<Option<Cgroup>>,
    /// Spares that registered, each in its cgroup (see [`crate::spares`]).
    spares: Arc<Spares>,
    /// The spares' registration on the engine socket (ends with the host).
    _spares: Option<tokio::task::JoinHandle<()>>,
    /// Set by [`WarmHost::retire`]: the server is stopping, and the process's end is
    /// expected rather than news.
    retired: std::sync::atomic::AtomicBool,
}

impl WarmHost {
    /// Start the process and wait until it has imported the module.
    pub async fn start(
        spec: HostSpec,
        channels: &Arc<crate::Channels>,
    ) -> Result<Arc<WarmHost>, RunnerError> {
        let cgroup = Cgroup::create(&spec.cgroup_name, spec.limits)
            .map_err(|e| RunnerError::Spawn(format!("creating the process's cgroup: {e}")))?;
        match Self::spawn(spec, &cgroup, channels).await {
            Ok(host) => {
                *lock(&host.cgroup) = Some(cgroup);
                Ok(host)
            }
            Err(e) => {
                destroy_later([cgroup]);
                Err(e)
            }
        }
    }

    async fn spawn(
        spec: HostSpec,
        cgroup: &Cgroup,
        channels: &Arc<crate::Channels>,
    ) -> Result<Arc<WarmHost>, RunnerError> {
        static SPARES: AtomicU64 = AtomicU64::new(0);
        let registration = channels.register(&format!(
            "spares-{}-{}",
            spec.deployment_id,
            SPARES.fetch_add(1, Ordering::Relaxed)
        ));
        let (spare_id, spare_key) = (registration.invocation_id.clone(), registration.key.clone());
        let spares: Arc<Spares> = Arc::default();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let theirs: OwnedFd = theirs.into();
        let fd = theirs.as_raw_fd();
        let mut sandbox = spec.sandbox.clone().in_cgroup(cgroup);
        sandbox.seccomp = SeccompProfile::WarmHost;
        sandbox.keep_fds = vec![3];
        // Each run loads this filter once it has its own namespaces, before any of its code.
        sandbox.files.push(JailFile {
            dst: PathBuf::from(RUN_SECCOMP),
            contents: Filter::new(Profile::Sandbox).to_bytes(),
        });
        let args: Vec<String> = vec![
            "-m".into(),
            "runloop._host".into(),
            "--module-dir".into(),
            spec.module_dir.to_string_lossy().into_owned(),
            "--module".into(),
            spec.module_name.clone(),
            "--control-fd".into(),
            "3".into(),
            "--engine-socket".into(),
            spec.engine_socket.to_string_lossy().into_owned(),
            "--run-tmp-bytes".into(),
            spec.run_tmp_bytes.to_string(),
            "--run-seccomp".into(),
            RUN_SECCOMP.into(),
            "--spare-id".into(),
            spare_id,
            "--spare-key".into(),
            spare_key,
        ];
        let mut cmd = sandbox
            .command(&spec.python.to_string_lossy(), &args)
            .map_err(|e| RunnerError::Spawn(format!("preparing the sandbox: {e}")))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The warm process dies with the thread that starts it: started from a lasting one.
        let mut child = openloop_sandbox::lasting::spawn(cmd)
            .map_err(|e| RunnerError::Spawn(format!("{}: {e}", spec.python.display())))?;
        drop(theirs);
        let pid = child.id().map(|p| p as i32).unwrap_or(-1);
        // Opened before anything waits for the child: it names this process and no other.
        let process = Pidfd::open(pid).ok();
        ours.set_nonblocking(true)?;
        let (read, write) = tokio::net::UnixStream::from_std(ours)?.into_split();
        let mut lines = BufReader::new(read).lines();

        // Output the module prints outside any run goes to the server log.
        let dep = spec.deployment_id.clone();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let tail: Tail = Arc::default();
        tokio::spawn(forward_output(dep.clone(), stdout, tail.clone()));
        let stderr_done = tokio::spawn(forward_output(dep, stderr, tail.clone()));

        let first = lines.next_line().await?;
        let ready: Value = match first {
            Some(l) => {
                serde_json::from_str(&l).map_err(|e| RunnerError::Protocol(e.to_string()))?
            }
            None => {
                let status = child.wait().await.ok();
                let _ = stderr_done.await;
                let said = lock(&tail).iter().cloned().collect::<Vec<_>>().join("\n");
                return Err(RunnerError::Spawn(format!(
                    "the process exited while importing the module ({}):\n{said}",
                    status.map(|s| s.to_string()).unwrap_or_default()
                )));
            }
        };
        if ready["event"] != "ready" {
            let _ = child.kill().await;
            return Err(RunnerError::Spawn(
                ready["error"]
                    .as_str()
                    .unwrap_or("unexpected first message")
                    .to_string(),
            ));
        }
        let (dead_tx, dead_rx) = watch::channel(None);
        let (spec_prefix, spec_limits) = (spec.run_cgroup_prefix.clone(), spec.run_limits);
        let host = Arc::new(WarmHost {
            spec,
            writer: tokio::sync::Mutex::new(write),
            next_id: AtomicU64::new(1),
            replies: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            killed: Mutex::default(),
            dead: dead_rx,
            pid,
            process,
            cgroup: Mutex::new(None),
            _spares: Some(tokio::spawn({
                let (spares, warm) = (spares.clone(), cgroup.clone());
                async move {
                    spares
                        .serve(registration, warm, spec_prefix, spec_limits)
                        .await
                }
            })),
            spares,
            retired: std::sync::atomic::AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&host);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(h) = weak.upgrade() else { break };
                h.on_message(&line);
            }
            let status = child.wait().await;
            let mut reason = match status {
                Ok(s) => format!("exited ({s})"),
                Err(e) => e.to_string(),
            };
            if let Some(h) = weak.upgrade() {
                if h.oom_kills() > 0 {
                    reason = format!(
                        "killed for using more than its {} MiB memory limit (raise it with \
                         `openloop serve --warm-memory-mb`)",
                        h.spec.limits.memory_bytes >> 20
                    );
                }
                if h.retired.load(Ordering::SeqCst) {
                    tracing::debug!(deployment = %h.spec.deployment_id, %reason, "warm Python process stopped with the server");
                } else {
                    tracing::warn!(deployment = %h.spec.deployment_id, %reason, "warm Python process stopped");
                }
                lock(&h.replies).clear();
                lock(&h.exits).clear();
            }
            let _ = dead_tx.send(Some(reason));
        });
        Ok(host)
    }

    /// The server is stopping: the process's end (with its cgroup) is expected, and is not
    /// reported as a warning.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    pub fn is_alive(&self) -> bool {
        self.dead.borrow().is_none()
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How many of this process's sandbox's processes the kernel killed for memory.
    fn oom_kills(&self) -> u64 {
        lock(&self.cgroup)
            .as_ref()
            .map(Cgroup::oom_kills)
            .unwrap_or(0)
    }

    fn on_message(&self, line: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            tracing::warn!(line, "unreadable message from the warm process");
            return;
        };
        if let Some(id) = msg["id"].as_u64() {
            let waiter = lock(&self.replies).remove(&id);
            if let Some(tx) = waiter {
                let _ = tx.send(msg);
            }
        } else if msg["event"] == "spare_failed" {
            let reason = msg["error"].as_str().unwrap_or("unknown reason");
            tracing::warn!(deployment = %self.spec.deployment_id, reason, "the warm process could not prepare a run's process");
            self.spares.failed(reason.to_string());
        } else if msg["event"] == "exit" {
            let inv = msg["invocation_id"].as_str().unwrap_or_default();
            let waiter = lock(&self.exits).remove(inv);
            if let Some(tx) = waiter {
                let _ = tx.send(ExitInfo {
                    code: msg["code"].as_i64().map(|c| c as i32),
                    signal: msg["signal"].as_i64().map(|s| s as i32),
                });
            }
        }
    }

    async fn call(&self, mut msg: Value) -> Result<Value, RunnerError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        msg["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        lock(&self.replies).insert(id, tx);
        self.send(&msg).await?;
        let mut dead = self.dead.clone();
        tokio::select! {
            r = rx => r.map_err(|_| self.died()),
            _ = dead.wait_for(|d| d.is_some()) => Err(self.died()),
        }
    }

    fn died(&self) -> RunnerError {
        RunnerError::HostDied(
            self.dead
                .borrow()
                .clone()
                .unwrap_or_else(|| "connection lost".into()),
        )
    }

    async fn send(&self, msg: &Value) -> Result<(), RunnerError> {
        let mut line = serde_json::to_vec(msg).map_err(|e| RunnerError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let mut w = self.writer.lock().await;
        w.write_all(&line).await.map_err(|_| self.died())
    }

    /// Check a request against the function's schema without running anything.
    pub async fn validate(
        &self,
        function: &str,
        request: &Value,
    ) -> Result<Vec<FieldError>, RunnerError> {
        let reply = self
            .call(json!({"op": "validate", "function": function, "request": request}))
            .await?;
        serde_json::from_value(reply["errors"].clone())
            .map_err(|e| RunnerError::Protocol(e.to_string()))
    }

    /// Be told when run `invocation_id`'s process ends (it must be given to a spare next).
    pub(crate) fn expect_exit(&self, invocation_id: &str) -> oneshot::Receiver<ExitInfo> {
        let (tx, rx) = oneshot::channel();
        lock(&self.exits).insert(invocation_id.to_string(), tx);
        rx
    }

    /// Tell the warm process that spare `spare` now runs `invocation_id` of `function` (it was
    /// sent its run directly): its exit is reported for that run, a kill of that run reaches
    /// it, and a replacement is forked (which rehearses `function`).
    pub(crate) async fn taken(
        &self,
        spare: &str,
        invocation_id: &str,
        function: &str,
    ) -> Result<(), RunnerError> {
        self.send(&json!({
            "op": "taken",
            "spare": spare,
            "invocation_id": invocation_id,
            "function": function,
        }))
        .await
    }

    /// Kill a run's whole process group.
    pub async fn kill(&self, invocation_id: &str) -> Result<(), RunnerError> {
        lock(&self.killed).insert(invocation_id);
        self.send(&json!({"op": "kill", "invocation_id": invocation_id}))
            .await
    }

    pub(crate) fn dead_signal(&self) -> watch::Receiver<Option<String>> {
        self.dead.clone()
    }
}

impl WarmHost {
    /// The oldest ready spare of this process, once there is one (see [`Spares::take`]).
    pub(crate) async fn take_spare(&self) -> Result<crate::spares::Ready, String> {
        self.spares.take().await
    }

    /// Where a run's cgroup goes at its end when it has the runs' default limits.
    pub(crate) fn recycled(&self) -> &Arc<crate::recycle::Recycled> {
        self.spares.recycled()
    }

    /// A spare the run did not use goes to the next run.
    pub(crate) fn put_back(&self, spare: crate::spares::Ready) {
        self.spares.put_back(spare)
    }

    /// Whether a kill of this run came (a run killed before it reached its spare never
    /// starts).
    pub(crate) fn was_killed(&self, invocation_id: &str) -> bool {
        lock(&self.killed).contains(invocation_id)
    }

    /// The run has ended: its kill, if any, need not be remembered.
    pub(crate) fn forget(&self, invocation_id: &str) {
        lock(&self.killed).remove(invocation_id);
        lock(&self.exits).remove(invocation_id);
    }
}

/// Invocations killed on this host, oldest first, at most [`Killed::KEPT`] (a kill for a
/// run that never came here is forgotten in turn).
#[derive(Default)]
struct Killed {
    set: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl Killed {
    const KEPT: usize = 4096;

    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_string()) {
            self.order.push_back(id.to_string());
        }
        while self.order.len() > Self::KEPT {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn remove(&mut self, id: &str) {
        if self.set.remove(id) {
            self.order.retain(|o| o != id);
        }
    }
}

impl Drop for WarmHost {
    fn drop(&mut self) {
        // The last reference is gone (its deployment was replaced and its runs ended).
        // Through the pidfd: the process may have exited and been reaped long ago, and its
        // pid reused by an unrelated process.
        if let Some(p) = &self.process {
            p.kill();
        }
        // Whatever is left of the process's sandbox dies with its cgroup, off any async thread.
        if let Some(t) = &self._spares {
            t.abort();
        }
        let cgroup = lock(&self.cgroup).take();
        let spares = self.spares.drain();
        if cgroup.is_some() || !spares.is_empty() {
            destroy_later(spares.into_iter().chain(cgroup));
        }
    }
}

/// Destroy cgroups off the async threads: emptying one kills its processes and waits until
/// they are gone (a run's pid 1 takes a few milliseconds to tear down its namespaces).
pub(crate) fn destroy_later(cgroups: impl IntoIterator<Item = Cgroup> + Send + 'static) {
    off_async_threads(move || cgroups.into_iter().for_each(|c| c.destroy()));
}

/// Run blocking cgroup work on tokio's blocking pool, or, outside the runtime (a host
/// dropped at shutdown), on a thread of its own; nobody waits for it.
pub(crate) fn off_async_threads(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(work)),
        Err(_) => drop(std::thread::spawn(work)),
    }
}

/// The last lines the warm process printed, for start-up failures.
type Tail = Arc<Mutex<std::collections::VecDeque<String>>>;

async fn forward_output<R: tokio::io::AsyncRead + Unpin>(
    deployment: String,
    src: Option<R>,
    tail: Tail,
) {
    let Some(src) = src else { return };
    let mut lines = BufReader::new(src).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        {
            let mut t = lock(&tail);
            t.push_back(line.clone());
            if t.len() > 20 {
                t.pop_front();
            }
        }
        tracing::info!(deployment = %deployment, "{line}");
    }
}
