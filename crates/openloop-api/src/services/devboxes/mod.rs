//! Devboxes: records in the store, sandboxes in `openloop-sandbox`, executions in memory.
//!
//! - here: the service, creating a devbox, and looking devboxes up for a caller;
//! - `commands`: starting commands in a devbox and finding its executions;
//! - [`executions`]: commands running in devboxes;
//! - `shape`: what a devbox asks for (Runloop's create body) and the size, limits and network
//!   it gets;
//! - `pool`: sandboxes of the default shape started ahead of time;
//! - `quota`: live devboxes per run and per API key;
//! - `lifecycle`: the idle timer, waiting for a status, shutdown and recovery;
//! - `suspend`: suspending a devbox (its processes end, its disk stays) and resuming it,
//!   also after a restart;
//! - `snapshots`: disk snapshots of devboxes, and devboxes started from them.
//! - [`blueprints`]: blueprints (a Dockerfile built once into a layer), and devboxes
//!   started from them;
//! - [`stdin`]: the standard input of executions started with `attach_stdin`;
//! - [`tunnels`]: HTTP to a port inside a devbox, by host name (`routes::tunnel_proxy`);
//! - `usage`: CPU, memory and disk a devbox used (Runloop's resource usage).
//!
//! Runloop's `DevboxView` is [`crate::model::DevboxView`].

pub mod blueprints;
mod commands;
pub mod executions;
mod lifecycle;
mod pool;
mod quota;
mod shape;
mod snapshots;
pub mod stdin;
mod suspend;
pub mod tunnels;
mod usage;

pub use blueprints::{BlueprintListQuery, CreateBlueprint};
use shape::Resources;
pub use shape::{AfterIdle, CreateDevbox, LaunchParameters, Lifecycle, OnIdle};
pub use snapshots::{SnapshotListQuery, SnapshotRequest};

use quota::Owner;

use crate::auth::Principal;
use crate::config::ServerConfig;
use crate::error::{ApiError, ApiResult};
use crate::notify::Notifier;
use crate::services::network_policies::NetworkPolicies;
use crate::services::secrets::Secrets;
use executions::{Execution, OutputBudget, OutputStore};
use openloop_sandbox::cgroup::Limits;
use openloop_sandbox::disk::DiskPool;
use openloop_sandbox::egress::EgressPolicy;
use openloop_sandbox::{image, Devbox, DevboxSpec, SandboxConfig};
use openloop_sync::lock;

/// Disk of a devbox that asks for no particular size, in GiB.
const DEFAULT_DISK_GB: u64 = 8;
use openloop_store::devboxes::{DevboxRecord, StatusChange};
use openloop_store::{now_ms, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;

use crate::model::{DevboxStatus, DevboxView};

/// A running devbox and its idle deadline.
struct Live {
    devbox: Arc<Devbox>,
    /// Milliseconds since the epoch after which an idle devbox is shut down (0: never).
    idle_deadline_ms: AtomicI64,
    keep_alive_ms: i64,
    rearm: tokio::sync::Notify,
    /// What happens once idle past the deadline.
    on_idle: OnIdle,
    /// The shutdown reason of an idle shutdown (`keep_alive_timeout`, or `idle` under
    /// `after_idle`).
    idle_reason: &'static str,
    /// Where its executions' output goes, within the devbox's byte cap.
    output: OutputStore,
}

/// How long a lost agent connection waits for its sandbox's exit to show (see `op_error`).
const AGENT_LOSS_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Devboxes {
    store: Store,
    config: Arc<ServerConfig>,
    notifier: Notifier,
    image: OnceCell<PathBuf>,
    live: Mutex<HashMap<String, Arc<Live>>>,
    executions: Mutex<HashMap<String, Arc<Execution>>>,
    /// Disks of the default size formatted ahead of time.
    pool: Option<Arc<DiskPool>>,
    /// Sandboxes of the default shape started ahead of time, not yet anyone's devbox.
    warm: Mutex<std::collections::VecDeque<Arc<Devbox>>>,
    warm_refill: Arc<tokio::sync::Notify>,
    /// `(devbox id, command id)` → execution id, so `execute` is idempotent.
    by_command_id: Mutex<HashMap<(String, String), String>>,
    /// Devboxes being created or live → who they count against (live devboxes never
    /// outlive the server process, so this is the whole truth; a key's suspended devbox
    /// counts again once resumed, a run's keeps counting).
    owners: Mutex<HashMap<String, Owner>>,
    secrets: Arc<Secrets>,
    network_policies: Arc<NetworkPolicies>,
    /// One lifecycle operation at a time per devbox (suspend, resume, snapshot, shutdown).
    ops: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held for reading while a devbox that starts from a snapshot or a blueprint is
    /// recorded, for writing while a snapshot or blueprint is deleted: neither is deleted
    /// while in use.
    snapshot_gate: tokio::sync::RwLock<()>,
    /// The execution output of suspended devboxes (their killed executions stay readable),
    /// taken back when they resume.
    parked_output: Mutex<HashMap<String, OutputStore>>,
    /// Live tunnels (they go with their devbox).
    tunnels: tunnels::TunnelTable,
    /// Blueprint builds: their slots and per-content locks.
    builds: blueprints::Builds,
}

fn status(status: &str) -> StatusChange<'_> {
    StatusChange {
        status,
        ..Default::default()
    }
}

impl Devboxes {
    /// Must be called inside the Tokio runtime (the disk pool fills in the background).
    pub fn new(
        store: Store,
        config: Arc<ServerConfig>,
        notifier: Notifier,
        secrets: Arc<Secrets>,
        network_policies: Arc<NetworkPolicies>,
    ) -> Self {
        let pool = (config.devbox_disk_pool > 0).then(|| {
            DiskPool::start(
                config.data_dir.join("disk-pool"),
                DEFAULT_DISK_GB << 30,
                config.devbox_disk_pool,
            )
        });
        Devboxes {
            pool,
            warm: Mutex::new(std::collections::VecDeque::new()),
            warm_refill: Arc::new(tokio::sync::Notify::new()),
            store,
            config,
            notifier,
            image: OnceCell::new(),
            live: Mutex::new(HashMap::new()),
            executions: Mutex::new(HashMap::new()),
            by_command_id: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            secrets,
            network_policies,
            ops: Mutex::new(HashMap::new()),
            snapshot_gate: tokio::sync::RwLock::new(()),
            parked_output: Mutex::new(HashMap::new()),
            tunnels: tunnels::TunnelTable::default(),
            builds: blueprints::Builds::default(),
        }
    }

    /// The directory of one devbox's execution output files.
    fn output_dir(&self, id: &str) -> PathBuf {
        self.config.exec_output_dir().join(id)
    }

    /// The base image, built on first use (concurrent callers wait for the one build).
    pub async fn base_image(&self) -> ApiResult<PathBuf> {
        self.image
            .get_or_try_init(|| async {
                let image =
                    image::ensure_base_image(&self.config.image_dir, &self.config.debian_mirror)
                        .await?;
                openloop_sandbox::devbox::prepare_agent_layer(
                    &self.config.agent_bin,
                    &self.config.agent_layer_dir(),
                )
                .map_err(|e| {
                    openloop_sandbox::SandboxError::Start(format!(
                        "placing the devbox agent {}: {e}",
                        self.config.agent_bin.display()
                    ))
                })?;
                Ok::<_, openloop_sandbox::SandboxError>(image)
            })
            .await
            .cloned()
            .map_err(|e| ApiError::Unavailable(e.to_string()))
    }

    async fn set_status(&self, id: &str, change: StatusChange<'_>) -> ApiResult<()> {
        self.store.set_devbox_status(id, change).await?;
        self.notifier.notify(id);
        Ok(())
    }

    async fn fail(&self, id: &str, code: &str, message: &str) -> ApiResult<()> {
        self.set_status(
            id,
            StatusChange {
                status: "failure",
                failure_reason: Some(code),
                message: Some(message),
                ..Default::default()
            },
        )
        .await
    }

    pub async fn create(
        self: &Arc<Self>,
        mut req: CreateDevbox,
        principal: &Principal,
    ) -> ApiResult<DevboxView> {
        // A snapshot or blueprint cannot be deleted between its check and the record naming it.
        let gate = match req.snapshot_id.is_some()
            || req.blueprint_id.is_some()
            || req.blueprint_name.is_some()
        {
            true => Some(self.snapshot_gate.read().await),
            false => None,
        };
        let blueprint = self.blueprint_for_devbox(&req, principal).await?;
        if let Some((bp, _)) = &blueprint {
            // Its launch parameters serve a devbox that gives none.
            if req.launch_parameters.is_none() {
                let params: Value = serde_json::from_str(&bp.parameters).unwrap_or(Value::Null);
                if let Some(lp) = params.get("launch_parameters").filter(|v| !v.is_null()) {
                    req.launch_parameters = serde_json::from_value(lp.clone()).ok();
                }
            }
        }
        let mut res = self.resources(&req)?;
        if let Some(tunnel) = &req.tunnel {
            tunnel.check()?;
        }
        let params = req.launch_parameters.clone().unwrap_or_default();
        self.apply_network_policy(&params, &mut res).await?;
        // A blueprint whose last USER is root makes root devboxes.
        if let Some((_, image)) = &blueprint {
            res.root |= image
                .user
                .as_deref()
                .is_some_and(|u| blueprints::dockerfile::is_root_user(u).unwrap_or(false));
        }
        // Root's home for a root devbox, then the blueprint's ENV, under the request's own
        // variables.
        let mut given_env: BTreeMap<String, String> = match res.root {
            true => [("HOME", "/root"), ("USER", "root"), ("LOGNAME", "root")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            false => BTreeMap::new(),
        };
        if let Some((_, image)) = &blueprint {
            given_env.extend(image.env.clone());
        }
        given_env.extend(req.environment_variables.clone().unwrap_or_default());
        let workdir = blueprint
            .as_ref()
            .and_then(|(_, image)| image.workdir.clone())
            .or_else(|| res.root.then(|| "/root".to_string()));
        let mut env = given_env.clone();
        // Opened here, only to be set in the sandbox; output of its commands is redacted.
        let given = self
            .secrets
            .resolve_for(principal, &req.secrets.clone().unwrap_or_default())
            .await?;
        env.extend(given.env);
        let redactor = Arc::new(given.redactor);
        for k in env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(ApiError::BadRequest(format!(
                    "environment variable name {k:?} is not valid"
                )));
            }
        }
        let lower = match (&req.snapshot_id, &blueprint) {
            (Some(s), _) => Some(self.usable_snapshot(s, principal).await?),
            (None, Some((bp, _))) => Some(self.blueprint_layer(&bp.content_hash)),
            (None, None) => None,
        };
        if let Some(layer) = &lower {
            if !tokio::fs::try_exists(layer).await.unwrap_or(false) {
                // In a cluster the layer is on the node that made it (the record is shared).
                return Err(ApiError::Conflict(format!(
                    "the {} this devbox would start from is not on this node (node {}): snapshot and blueprint layers stay on the node that made them; create the devbox through that node",
                    if req.snapshot_id.is_some() { "disk snapshot" } else { "blueprint" },
                    self.config.node_id
                )));
            }
        }
        // A sandbox started ahead of time serves any devbox of the default shape.
        let warm = match lower {
            Some(_) => None,
            None => self.take_warm(&res),
        };
        let id = match &warm {
            Some(d) => d.id.clone(),
            None => openloop_store::new_id("dbx"),
        };
        let reservation = match self.reserve(&id, principal) {
            Ok(r) => r,
            Err(e) => {
                // Not this caller's: back to the pool for the next create.
                if let Some(d) = warm {
                    lock(&self.warm).push_front(d);
                }
                return Err(e);
            }
        };
        let spec_json = json!({
            "launch_parameters": params,
            "entrypoint": req.entrypoint,
            "metadata": req.metadata.clone().unwrap_or_default(),
            "network": if res.network { "outbound" } else { "none" },
            // What a resume needs to start it again: its variables (sealed) and the names of
            // the secrets it was given (never their values).
            "environment": self.seal_env(&id, &given_env)?,
            "workdir": workdir,
            "root": res.root,
            "secrets": req.secrets.clone().unwrap_or_default(),
        });
        let record = DevboxRecord {
            id: id.clone(),
            name: req.name.clone(),
            status: "provisioning".into(),
            invocation_id: principal.invocation_id().map(str::to_string),
            key_id: principal.key_id().map(str::to_string),
            failure_reason: None,
            shutdown_reason: None,
            status_message: None,
            spec: spec_json.to_string(),
            created_at_ms: now_ms(),
            ended_at_ms: None,
            snapshot_id: req.snapshot_id.clone(),
            node_id: Some(self.config.node_id.clone()),
            blueprint_id: blueprint.as_ref().map(|(bp, _)| bp.id.clone()),
        };
        self.store.insert_devbox(&record).await?;
        drop(gate);
        let devbox = match warm {
            Some(d) => {
                d.set_env(env);
                d.set_workdir(workdir);
                d
            }
            None => {
                let spec = DevboxSpec {
                    id: id.clone(),
                    env,
                    limits: res.limits,
                    disk_bytes: res.disk_bytes,
                    network: res.network,
                    egress: res.egress.clone(),
                    lower,
                    root: res.root,
                    sudo: self.config.devbox_sudo && !res.root,
                };
                match self.start_sandbox(spec).await {
                    Ok(d) => {
                        d.set_workdir(workdir);
                        d
                    }
                    Err(e) => {
                        self.fail(&id, "execution_failed", &e.to_string()).await?;
                        return Err(e);
                    }
                }
            }
        };
        let idle = record.invocation_id.is_none() && !res.keep_alive.is_zero();
        // From here on, stopping the devbox gives its place back.
        reservation.keep();
        let view = self
            .bring_up(BringUp {
                id: &id,
                devbox,
                keep_alive: if idle { res.keep_alive } else { Duration::ZERO },
                on_idle: res.on_idle,
                idle_reason: if res.after_idle {
                    "idle"
                } else {
                    "keep_alive_timeout"
                },
                redactor,
                output: None,
                resumed: false,
                file_mounts: req.file_mounts.as_ref(),
                launch_commands: params.launch_commands.as_deref().unwrap_or_default(),
                entrypoint: req.entrypoint.as_deref(),
            })
            .await?;
        // The tunnel asked for at creation (not again at a resume: it outlives a suspend).
        match req.tunnel.clone() {
            Some(tunnel) if view.status == DevboxStatus::Running => {
                self.enable_tunnel(&id, principal, tunnel).await?;
                self.view(&id).await
            }
            _ => Ok(view),
        }
    }

    /// Apply `launch_parameters.network_policy_id`: outbound network under its rules.
    async fn apply_network_policy(
        &self,
        params: &LaunchParameters,
        res: &mut Resources,
    ) -> ApiResult<()> {
        if let Some(policy) = params
            .other
            .get("network_policy_id")
            .filter(|v| !v.is_null())
        {
            let id = policy.as_str().ok_or_else(|| {
                ApiError::BadRequest("launch_parameters.network_policy_id must be a string".into())
            })?;
            res.egress = Some(self.network_policies.resolve(id).await?);
            res.network = true;
        }
        Ok(())
    }

    /// Make a started sandbox devbox `b.id`'s (its place in its owner's quota already
    /// taken): follow it, write its file mounts, run its launch commands, start its
    /// entrypoint, and mark it `running` (or `failure`). Used by create and resume.
    async fn bring_up(self: &Arc<Self>, b: BringUp<'_>) -> ApiResult<DevboxView> {
        let id = b.id.to_string();
        let devbox = b.devbox;
        let redactor = b.redactor;
        let output = match b.output {
            Some(o) => o,
            None => OutputStore {
                dir: self.output_dir(&id),
                budget: Arc::new(OutputBudget::new(self.config.devbox_exec_output_bytes)),
                redactor: redactor.clone(),
            },
        };
        if let Err(e) = create_private_dir(&output.dir).await {
            devbox.shutdown().await;
            self.release(&id);
            let message = format!("cannot prepare the devbox's output directory: {e}");
            self.fail(&id, "execution_failed", &message).await?;
            return Err(ApiError::Internal(message));
        }
        let live = Arc::new(Live {
            devbox: devbox.clone(),
            idle_deadline_ms: AtomicI64::new(0),
            keep_alive_ms: b.keep_alive.as_millis() as i64,
            rearm: tokio::sync::Notify::new(),
            on_idle: b.on_idle,
            idle_reason: b.idle_reason,
            output,
        });
        self.touch(&live);
        lock(&self.live).insert(id.clone(), live.clone());
        self.watch(id.clone(), live.clone());
        if !b.resumed {
            // A resumed devbox goes straight from `resuming` to `running`.
            self.set_status(&id, status("initializing")).await?;
        }
        for (path, contents) in b.file_mounts.into_iter().flatten() {
            if let Err(e) = devbox.write_file(path, contents.as_bytes()).await {
                self.fail(&id, "execution_failed", &format!("file mount {path}: {e}"))
                    .await?;
                self.stop(&id).await;
                return self.view(&id).await;
            }
        }
        for cmd in b.launch_commands {
            let out = devbox
                .exec(cmd, BTreeMap::new(), None, 64 * 1024, None)
                .await;
            let failed = match out {
                Ok(o) if o.exit.shell_code() == 0 => None,
                Ok(o) => Some(format!(
                    "launch command {cmd:?} exited with {}: {}",
                    o.exit.shell_code(),
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Some(format!("launch command {cmd:?} failed: {e}")),
            };
            if let Some(reason) = failed {
                let reason = redactor.redact_string(reason);
                self.fail(&id, "execution_failed", &reason).await?;
                self.stop(&id).await;
                return self.view(&id).await;
            }
        }
        if let Some(entry) = b.entrypoint.filter(|e| !e.trim().is_empty()) {
            // The entrypoint runs in the background for the devbox's life, its output in a log file.
            let cmd = format!(
                "nohup bash -c {} >/home/user/.entrypoint.log 2>&1 &",
                shell_quote(entry)
            );
            devbox.exec(&cmd, BTreeMap::new(), None, 1024, None).await?;
        }
        self.set_status(&id, status("running")).await?;
        self.view(&id).await
    }

    async fn start_sandbox(&self, spec: DevboxSpec) -> ApiResult<Arc<Devbox>> {
        let id = spec.id.clone();
        let sandbox = SandboxConfig {
            devbox_dir: self.config.devbox_dir(),
            image: self.base_image().await?,
            agent_layer: self.config.agent_layer_dir(),
            pool: self.pool.clone(),
        };
        Devbox::start(&sandbox, spec)
            .await
            .map(Arc::new)
            .map_err(|e| ApiError::Internal(format!("devbox {id} failed to start: {e}")))
    }

    fn is_live(&self, id: &str) -> bool {
        lock(&self.live).contains_key(id)
    }

    fn has_running_execution(&self, id: &str) -> bool {
        lock(&self.executions)
            .values()
            .any(|e| e.devbox_id == id && !e.is_completed())
    }

    /// A devbox the caller may see (its own when the caller is a run).
    pub async fn authorized(&self, id: &str, principal: &Principal) -> ApiResult<DevboxRecord> {
        let rec = self.store.get_devbox(id).await?;
        if let Some(inv) = principal.invocation_id() {
            if rec.invocation_id.as_deref() != Some(inv) {
                return Err(ApiError::NotFound(format!("devbox '{id}' not found")));
            }
        }
        Ok(rec)
    }

    /// The live sandbox of a devbox the caller may use; counts as activity.
    /// The error of an operation on a devbox that was running when it started: losing the
    /// agent because the devbox stopped meanwhile (shut down by another request, idle, its
    /// sandbox died) is a 409 like any operation on a stopped devbox, not a server failure.
    ///
    /// The agent's connection can break a moment before the server sees the sandbox exit (its
    /// entrypoint ended, it was killed): a lost connection waits up to [`AGENT_LOSS_GRACE`]
    /// for that exit before it is called a server failure.
    pub async fn op_error(&self, id: &str, e: openloop_sandbox::SandboxError) -> ApiError {
        let openloop_sandbox::SandboxError::Io(_) = &e else {
            return e.into();
        };
        let devbox = lock(&self.live).get(id).map(|l| l.devbox.clone());
        let stopped = match devbox {
            None => true,
            Some(d) => tokio::time::timeout(AGENT_LOSS_GRACE, d.exited())
                .await
                .is_ok(),
        };
        if stopped {
            ApiError::Conflict(format!("devbox {id} stopped during the request"))
        } else {
            e.into()
        }
    }

    /// An operation's result, its error as [`op_error`](Self::op_error) maps it.
    pub async fn op<T>(
        &self,
        id: &str,
        r: Result<T, openloop_sandbox::SandboxError>,
    ) -> ApiResult<T> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(self.op_error(id, e).await),
        }
    }

    pub async fn running(&self, id: &str, principal: &Principal) -> ApiResult<Arc<Devbox>> {
        Ok(self.running_live(id, principal).await?.devbox.clone())
    }

    async fn running_live(&self, id: &str, principal: &Principal) -> ApiResult<Arc<Live>> {
        let rec = self.authorized(id, principal).await?;
        let live = lock(&self.live).get(id).cloned();
        match live {
            Some(l) if l.devbox.exit_reason().is_none() && rec.status == "running" => {
                self.touch(&l);
                Ok(l)
            }
            _ if rec.status == "suspended" => Err(ApiError::Conflict(format!(
                "devbox {id} is suspended: resume it first (POST /v1/devboxes/{id}/resume), then try again"
            ))),
            _ => Err(ApiError::Conflict(format!(
                "devbox {id} is not running (status {}){}",
                rec.status,
                rec.status_message
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ))),
        }
    }

    pub async fn keep_alive(&self, id: &str, principal: &Principal) -> ApiResult<()> {
        self.running(id, principal).await.map(|_| ())
    }

    pub async fn view(&self, id: &str) -> ApiResult<DevboxView> {
        self.view_of(&self.store.get_devbox(id).await?).await
    }

    /// The `DevboxView` of a record, with its status history.
    pub async fn view_of(&self, rec: &DevboxRecord) -> ApiResult<DevboxView> {
        let mut view = DevboxView::of(rec, &self.store.devbox_transitions(&rec.id).await?)?;
        view.tunnel = self.tunnel_view(&rec.id);
        Ok(view)
    }
}

/// What [`Devboxes::bring_up`] makes of a started sandbox.
struct BringUp<'a> {
    id: &'a str,
    devbox: Arc<Devbox>,
    /// Idle time before `on_idle` (zero: never).
    keep_alive: Duration,
    on_idle: OnIdle,
    idle_reason: &'static str,
    redactor: Arc<crate::services::secrets::Redactor>,
    /// The execution output store to keep (a resumed devbox's), else a new one.
    output: Option<OutputStore>,
    /// Whether the devbox is being resumed (not created).
    resumed: bool,
    file_mounts: Option<&'a BTreeMap<String, String>>,
    launch_commands: &'a [String],
    entrypoint: Option<&'a str>,
}

/// A directory only root can enter (its parent too), for output the sandboxes must not see.
async fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(dir).await?;
    if let Some(parent) = dir.parent() {
        tokio::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).await?;
    }
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
