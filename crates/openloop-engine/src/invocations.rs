//! The [`Invocations`] service: its state, and looking invocations up. Its work is split by
//! job: `admission` (new invocations), `lifecycle` (one run), `cancel` (canceling and
//! waiting), `recovery` (after a restart), `registry` (warm processes and manifests).

use crate::node::Node;
use crate::notify::Notifier;
use crate::ports::Collaborators;
use crate::slots::RunSlots;
use crate::{EngineConfig, EngineError, EngineResult};
use openloop_deploy::Manifest;
use openloop_runner::{Channels, WarmHost};
use openloop_store::deployments::Deployment;
use openloop_store::invocations::Invocation;
use openloop_store::{Store, StoreError};
use openloop_sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

pub struct Invocations {
    pub(crate) store: Store,
    pub(crate) config: Arc<EngineConfig>,
    pub(crate) notifier: Notifier,
    pub(crate) ports: Collaborators,
    pub(crate) channels: Arc<Channels>,
    /// Warm processes by deployment id, with their project.
    pub(crate) hosts: Mutex<HashMap<String, (String, Arc<WarmHost>)>>,
    /// Serialises starting the warm process of one deployment.
    pub(crate) starting: tokio::sync::Mutex<()>,
    pub(crate) slots: Arc<Semaphore>,
    /// Per `project/function` limits, created on first use.
    pub(crate) function_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Runs holding (or, while they wait on a child, lending) slots, by invocation id.
    pub(crate) in_flight: Mutex<HashMap<String, Arc<RunSlots>>>,
    /// Runs in flight: invocation id → the warm process running it, or a mark left by a
    /// cancel that came before the run reached its warm process (see [`Running`]).
    pub(crate) running: Mutex<HashMap<String, Running>>,
    /// Deployed deployments never change: their parsed manifests, by id.
    pub(crate) loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    /// Project → its active deployment id, kept in step by [`Invocations::activate`].
    pub(crate) active: Mutex<HashMap<String, String>>,
    /// This node, its lease epoch.
    pub node: Arc<Node>,
    /// Runs queued anywhere that this node may take when it has a free slot.
    pub(crate) queue: crate::cluster::queue::QueueState,
    /// Serialises building deployments another node built (cluster mode).
    pub(crate) materializing: tokio::sync::Mutex<()>,
}

/// A run's entry in [`Invocations::running`]. Starting a run and canceling it meet under
/// that one lock: a cancel that finds the run's warm process kills the run there (the warm
/// process also refuses a run whose kill came first); one that comes earlier leaves
/// `CanceledEarly`, and the run then never starts.
pub(crate) enum Running {
    Host(Arc<WarmHost>),
    /// When the cancel came (in a cluster, marks for runs that never come here are dropped
    /// after a while: `cluster::lease`).
    CanceledEarly(std::time::Instant),
}

/// A deployment with its parsed manifest.
pub struct Loaded {
    pub dep: Deployment,
    pub manifest: Manifest,
}

pub fn manifest_of(dep: &Deployment) -> EngineResult<Manifest> {
    let text = dep
        .manifest
        .as_deref()
        .ok_or_else(|| EngineError::Internal(format!("deployment {} has no manifest", dep.id)))?;
    serde_json::from_str(text).map_err(|e| EngineError::Internal(format!("corrupt manifest: {e}")))
}

/// Remove the cgroups of this server's runs, spares, warm processes and builds (the
/// instance tag names them), killing whatever still runs in them; how many there were.
/// Warm processes go first: one that is still alive replaces each spare killed, and the
/// replacement's registration makes a new run cgroup. A registration that was already under
/// way when its warm process died is caught by the second pass over runs.
async fn remove_own_cgroups(tag: &str) -> usize {
    let tag = tag.to_string();
    tokio::task::spawn_blocking(move || {
        ["warm", "run", "build", "run"]
            .iter()
            .map(|kind| openloop_sandbox::cgroup::remove_leftovers(&format!("{kind}-{tag}-")))
            .sum::<usize>()
    })
    .await
    .unwrap_or(0)
}

impl Invocations {
    /// At a graceful stop, once this node has left ([`Self::leave`]): its warm processes,
    /// their spares and whatever is still running go with their cgroups now. (They would
    /// die with the server anyway, but their cgroups would stay behind until a server next
    /// starts on this data directory.)
    pub async fn release_cgroups(&self) {
        for (_, host) in lock(&self.hosts).values() {
            host.retire();
        }
        let removed = remove_own_cgroups(&self.config.instance_tag).await;
        tracing::debug!(removed, "removed this server's cgroups");
    }

    pub async fn new(
        store: Store,
        config: EngineConfig,
        notifier: Notifier,
        ports: Collaborators,
    ) -> std::io::Result<Self> {
        // The engine socket sits on a tmpfs of its own (in the server's private mount
        // namespace), so a sandbox it is bound into sees no host path in its mount table.
        if let Err(e) = openloop_sandbox::jail::socket_tmpfs(&config.run_dir) {
            tracing::warn!(error = %e, "the engine socket's directory is not a tmpfs");
        }
        let channels = Channels::bind(&config.run_dir, config.engine).await?;
        if !openloop_sandbox::cgroup::favors_moves() {
            tracing::info!("this host's cgroups are not mounted with favordynmods: moving each run's process into its cgroup now and then waits for an RCU grace period (milliseconds, holding up forks); see README, Limits, to remount them");
        }
        // Before anything runs: cgroups of runs, warm processes and builds cut short by a
        // crash of a previous process.
        let removed = remove_own_cgroups(&config.instance_tag).await;
        if removed > 0 {
            tracing::info!(removed, "removed cgroups left by a previous server process");
        }
        // A new epoch: what this node ran under an older one is recovered, and nothing of
        // that may be finished any more.
        let epoch = store
            .join_cluster(&config.node.id, &config.node.address)
            .await
            .map_err(std::io::Error::other)?;
        tracing::info!(node = %config.node.id, epoch, clustered = config.node.cluster_database_url.is_some(), "node joined");
        let node = Arc::new(Node::new(config.node.clone(), epoch));
        Ok(Invocations {
            node,
            queue: Default::default(),
            materializing: tokio::sync::Mutex::new(()),
            slots: Arc::new(Semaphore::new(config.max_concurrent_runs.max(1))),
            store,
            config: Arc::new(config),
            notifier,
            ports,
            channels,
            hosts: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
            function_slots: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
        })
    }

    /// An invocation as a caller may read it: any with an API key (`caller_run` is `None`),
    /// and from a run only the invocations that run started.
    pub async fn get_for(&self, caller_run: Option<&str>, id: &str) -> EngineResult<Invocation> {
        let inv = self.store.get_invocation(id).await?;
        match caller_run {
            Some(run) if inv.parent_invocation_id.as_deref() != Some(run) => {
                Err(EngineError::NotFound(format!(
                    "invocation '{id}' not found among the invocations this run ({run}) started"
                )))
            }
            _ => Ok(inv),
        }
    }

    pub(crate) fn run_slots(&self, id: &str) -> Option<Arc<RunSlots>> {
        lock(&self.in_flight).get(id).cloned()
    }

    /// How many calls deep a run in flight is (0: invoked with an API key).
    pub(crate) async fn depth_of_run(&self, id: &str) -> EngineResult<u32> {
        if let Some(run) = self.run_slots(id) {
            return Ok(run.depth);
        }
        self.depth_of(&self.store.get_invocation(id).await?).await
    }

    /// How many calls deep an invocation is: its parent's depth plus one, from memory while the
    /// parent runs, else read along the recorded parents (at most `max_call_depth + 1` reads:
    /// no chain is longer than the limit allows).
    pub(crate) async fn depth_of(&self, inv: &Invocation) -> EngineResult<u32> {
        let mut depth = 0u32;
        let mut parent = inv.parent_invocation_id.clone();
        while let Some(p) = parent {
            depth += 1;
            if let Some(run) = self.run_slots(&p) {
                return Ok(depth + run.depth);
            }
            if depth > self.config.max_call_depth {
                break;
            }
            parent = match self.store.get_invocation(&p).await {
                Ok(i) => i.parent_invocation_id,
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
        }
        Ok(depth)
    }
}
