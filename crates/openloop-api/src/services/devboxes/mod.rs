//! Devboxes: records in the store, sandboxes in `openloop-sandbox`, executions in memory.
//!
//! - here: the service, and looking devboxes up for a caller;
//! - `create`: creating a devbox, and bringing up a started sandbox (also a resumed one);
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
mod create;
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

pub(crate) use create::shell_quote;
use create::BringUp;
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
    /// When a create last took a warm sandbox (the refill waits for a pause after it).
    warm_taken_at: Mutex<Option<std::time::Instant>>,
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
    snapshot_gate: Arc<tokio::sync::RwLock<()>>,
    /// The execution output of suspended devboxes (their killed executions stay readable),
    /// taken back when they resume.
    parked_output: Mutex<HashMap<String, OutputStore>>,
    /// Live tunnels (they go with their devbox).
    tunnels: tunnels::TunnelTable,
    /// Blueprint builds: their slots and per-content locks.
    builds: blueprints::Builds,
    /// Teardowns of run devboxes left to finish in the background (see
    /// [`Devboxes::shutdown_for_invocation`]); `shutdown_all` waits for them.
    teardowns: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Set by `shutdown_all`: the server is stopping, and teardowns happen inline.
    closing: std::sync::atomic::AtomicBool,
    /// This service itself, for the tasks it leaves teardowns to.
    me: std::sync::Weak<Devboxes>,
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
    ) -> Arc<Self> {
        let pool = (config.devbox_disk_pool > 0).then(|| {
            DiskPool::start(
                config.data_dir.join("disk-pool"),
                DEFAULT_DISK_GB << 30,
                config.devbox_disk_pool,
            )
        });
        Arc::new_cyclic(|me| Devboxes {
            pool,
            warm: Mutex::new(std::collections::VecDeque::new()),
            warm_refill: Arc::new(tokio::sync::Notify::new()),
            warm_taken_at: Mutex::new(None),
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
            snapshot_gate: Arc::new(tokio::sync::RwLock::new(())),
            parked_output: Mutex::new(HashMap::new()),
            tunnels: tunnels::TunnelTable::default(),
            builds: blueprints::Builds::default(),
            teardowns: Mutex::new(Vec::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
            me: me.clone(),
        })
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
