//! Invocations: admission (schema check), the queue, running in the warm process,
//! recording logs and outcome, and recovery after a crash.
//!
//! - `warm`: each deployment's warm process, started on demand in its jail;
//! - `logs`: a run's log records, batched into the store, redacted.

mod logs;
mod warm;

use logs::write_logs;

use crate::auth::{Principal, Tokens};
use crate::config::ServerConfig;
use crate::error::{ApiError, ApiResult};
use crate::notify::Notifier;
use crate::services::devboxes::Devboxes;
use crate::services::network_policies::NetworkPolicies;
use crate::services::secrets::{Redactor, Secrets};
use crate::services::slots::{Permits, RunSlots};
use openloop_deploy::Manifest;
use openloop_runner::{run::RunOutcome, Channels, HostSpec, LogLine, RunRequest, WarmHost};
use openloop_sandbox::cgroup::Limits;
use openloop_sandbox::jail::Network;
use openloop_sandbox::python::{self, PythonSandbox};
use openloop_store::deployments::Deployment;
use openloop_store::invocations::{Invocation, InvocationLog};
use openloop_store::{now_ms, Store, StoreError};
use openloop_sync::lock;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Semaphore};
use tracing::Instrument;

pub struct Invocations {
    store: Store,
    config: Arc<ServerConfig>,
    notifier: Notifier,
    tokens: Tokens,
    devboxes: Arc<Devboxes>,
    secrets: Arc<Secrets>,
    network_policies: Arc<NetworkPolicies>,
    channels: Arc<Channels>,
    /// Warm processes by deployment id, with their project.
    hosts: Mutex<HashMap<String, (String, Arc<WarmHost>)>>,
    /// Serialises starting the warm process of one deployment.
    starting: tokio::sync::Mutex<()>,
    slots: Arc<Semaphore>,
    /// Per `project/function` limits, created on first use.
    function_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Runs holding (or, while they wait on a child, lending) slots, by invocation id.
    in_flight: Mutex<HashMap<String, Arc<RunSlots>>>,
    /// Runs in flight: invocation id → the warm process running it, or a mark left by a
    /// cancel that came before the run reached its warm process (see [`Running`]).
    running: Mutex<HashMap<String, Running>>,
    /// Deployed deployments never change: their parsed manifests, by id.
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    /// Project → its active deployment id, kept in step by [`Invocations::activate`].
    active: Mutex<HashMap<String, String>>,
}

/// A run's entry in [`Invocations::running`]. Starting a run and canceling it meet under
/// that one lock: a cancel that finds the run's warm process kills the run there (the warm
/// process also refuses a run whose kill came first); one that comes earlier leaves
/// `CanceledEarly`, and the run then never starts.
enum Running {
    Host(Arc<WarmHost>),
    CanceledEarly,
}

/// A deployment with its parsed manifest.
pub struct Loaded {
    pub dep: Deployment,
    pub manifest: Manifest,
}

pub fn manifest_of(dep: &Deployment) -> ApiResult<Manifest> {
    let text = dep
        .manifest
        .as_deref()
        .ok_or_else(|| ApiError::Internal(format!("deployment {} has no manifest", dep.id)))?;
    serde_json::from_str(text).map_err(|e| ApiError::Internal(format!("corrupt manifest: {e}")))
}

impl Invocations {
    pub async fn new(
        store: Store,
        config: Arc<ServerConfig>,
        notifier: Notifier,
        tokens: Tokens,
        devboxes: Arc<Devboxes>,
        secrets: Arc<Secrets>,
        network_policies: Arc<NetworkPolicies>,
    ) -> std::io::Result<Self> {
        // The engine socket sits on a tmpfs of its own (in the server's private mount
        // namespace), so a sandbox it is bound into sees no host path in its mount table.
        if let Err(e) = openloop_sandbox::jail::socket_tmpfs(&config.run_dir()) {
            tracing::warn!(error = %e, "the engine socket's directory is not a tmpfs");
        }
        let channels = Channels::bind(&config.run_dir(), config.engine).await?;
        // Before anything runs: cgroups of runs, warm processes and builds cut short by a
        // crash of a previous process.
        let tag = config.instance_tag();
        let removed = tokio::task::spawn_blocking(move || {
            ["run", "warm", "build"]
                .iter()
                .map(|kind| openloop_sandbox::cgroup::remove_leftovers(&format!("{kind}-{tag}-")))
                .sum::<usize>()
        })
        .await
        .unwrap_or(0);
        if removed > 0 {
            tracing::info!(removed, "removed cgroups left by a previous server process");
        }
        Ok(Invocations {
            slots: Arc::new(Semaphore::new(config.max_concurrent_runs.max(1))),
            store,
            config,
            notifier,
            tokens,
            devboxes,
            secrets,
            network_policies,
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

    fn cache(&self, dep: &Deployment) -> ApiResult<Arc<Loaded>> {
        let loaded = Arc::new(Loaded {
            manifest: manifest_of(dep)?,
            dep: dep.clone(),
        });
        if dep.status == "deployed" {
            lock(&self.loaded).insert(dep.id.clone(), loaded.clone());
        }
        Ok(loaded)
    }

    /// A deployed deployment and its manifest (from memory after the first read).
    async fn deployment(&self, id: &str) -> ApiResult<Arc<Loaded>> {
        let cached = lock(&self.loaded).get(id).cloned();
        if let Some(l) = cached {
            return Ok(l);
        }
        self.cache(&self.store.get_deployment(id).await?)
    }

    /// The deployment serving a project, if any.
    async fn active_deployment(&self, project: &str) -> ApiResult<Option<Arc<Loaded>>> {
        let known = lock(&self.active).get(project).cloned();
        if let Some(id) = known {
            return self.deployment(&id).await.map(Some);
        }
        let Some(dep) = self.store.active_deployment(project).await? else {
            return Ok(None);
        };
        lock(&self.active).insert(project.to_string(), dep.id.clone());
        self.cache(&dep).map(Some)
    }

    /// Make `dep` the one warm process of its project. Older processes of the project leave
    /// the table now and stop when their last run ends (runs hold their own reference).
    pub async fn activate(&self, dep: &Deployment) -> ApiResult<()> {
        self.host_for(dep).await?;
        lock(&self.active).insert(dep.project_name.clone(), dep.id.clone());
        lock(&self.hosts).retain(|id, (project, _)| id == &dep.id || project != &dep.project_name);
        Ok(())
    }

    /// Check and record a new invocation, then queue it. Returns it as created.
    pub async fn submit(
        self: &Arc<Self>,
        project: &str,
        function: &str,
        request: Value,
        parent: Option<String>,
    ) -> ApiResult<Invocation> {
        let loaded = self.active_deployment(project).await?.ok_or_else(|| {
            ApiError::NotFound(format!(
                "project '{project}' not found: it has no successful deployment (deploy it with `openloop deploy`)"
            ))
        })?;
        let (dep, manifest) = (&loaded.dep, &loaded.manifest);
        if manifest.function(function).is_none() {
            let names: Vec<&str> = manifest.functions.iter().map(|f| f.name.as_str()).collect();
            return Err(ApiError::NotFound(format!(
                "function '{function}' not found in project '{project}'; it has: {}",
                names.join(", ")
            )));
        }
        if !request.is_object() {
            return Err(ApiError::Validation(
                "`request` must be a JSON object of the function's parameters".into(),
            ));
        }
        if let Some(caller) = &parent {
            let depth = self.depth_of_run(caller).await? + 1;
            if depth > self.config.max_call_depth {
                return Err(ApiError::CallDepthExceeded {
                    target: format!("{project}/{function}"),
                    depth,
                    limit: self.config.max_call_depth,
                });
            }
        }
        let host = self.host_for(dep).await?;
        let errors = host
            .validate(function, &request)
            .instrument(stage("validate"))
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        if !errors.is_empty() {
            let text: Vec<String> = errors
                .iter()
                .map(|e| format!("request.{}: {}", e.field, e.message))
                .collect();
            return Err(ApiError::Validation(format!(
                "the request does not match the schema of {project}/{function}: {}",
                text.join("; ")
            )));
        }
        let inv = Invocation {
            id: openloop_store::new_id("inv"),
            project_name: project.to_string(),
            function_name: function.to_string(),
            deployment_id: dep.id.clone(),
            status: "queued".into(),
            request: request.to_string(),
            result: None,
            error: None,
            parent_invocation_id: parent,
            created_at_ms: now_ms(),
            started_at_ms: None,
            ended_at_ms: None,
        };
        self.store
            .insert_invocation(&inv)
            .instrument(stage("insert"))
            .await?;
        self.notifier.notify(crate::notify::ANY_INVOCATION);
        if let Some(caller) = inv
            .parent_invocation_id
            .as_deref()
            .and_then(|p| self.run_slots(p))
        {
            caller.add_child(&inv.id);
        }
        self.spawn_recorded(inv.clone());
        Ok(inv)
    }

    /// Run a queued invocation in the background; it outlives the request that made it.
    pub fn spawn(self: &Arc<Self>, id: String) {
        self.spawn_run(id, None)
    }

    /// [`spawn`](Self::spawn) for an invocation just recorded by this process: its record is
    /// handed over rather than read back (its status is still checked when it starts).
    fn spawn_recorded(self: &Arc<Self>, inv: Invocation) {
        self.spawn_run(inv.id.clone(), Some(inv))
    }

    fn spawn_run(self: &Arc<Self>, id: String, recorded: Option<Invocation>) {
        let this = Arc::clone(self);
        let queued = stage("queue");
        tokio::spawn(async move {
            drop(queued);
            if let Err(e) = this.execute(&id, recorded).await {
                tracing::error!(invocation = %id, error = %e, "invocation could not be run");
                let err = serde_json::json!({"type": "PlatformError", "message": e.to_string(), "traceback": null});
                let _ = this
                    .store
                    .finish_invocation(&id, "failure", None, Some(&err.to_string()))
                    .await;
                this.notifier.invocation_changed(&id);
            }
        });
    }

    fn function_slots(&self, project: &str, function: &str) -> Option<Arc<Semaphore>> {
        let limit = self.config.max_concurrent_runs_per_function;
        if limit == 0 {
            return None;
        }
        let key = format!("{project}/{function}");
        Some(
            lock(&self.function_slots)
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone(),
        )
    }

    async fn execute(&self, id: &str, recorded: Option<Invocation>) -> ApiResult<()> {
        let stopping = |_| ApiError::Unavailable("the server is stopping".into());
        let (queued, depth) = async {
            let queued = match recorded {
                Some(inv) => inv,
                None => self.store.get_invocation(id).await?,
            };
            let depth = self.depth_of(&queued).await?;
            ApiResult::Ok((queued, depth))
        }
        .instrument(stage("read"))
        .await?;
        let function_slots = self.function_slots(&queued.project_name, &queued.function_name);
        let permits = Permits::take(&self.slots, function_slots.as_ref())
            .instrument(stage("slots"))
            .await
            .map_err(stopping)?;
        if !self
            .store
            .mark_invocation_running(id)
            .instrument(stage("mark_running"))
            .await?
        {
            // Canceled while queued: a cancel's mark, if any, is done with.
            lock(&self.running).remove(id);
            return Ok(());
        }
        // Held until this returns, however it returns; lent to children while the run waits.
        let _in_flight = InFlight::enter(
            self,
            id,
            RunSlots::new(
                depth,
                queued.parent_invocation_id.clone(),
                self.slots.clone(),
                function_slots,
                permits,
            ),
        );
        self.notifier.invocation_changed(id);
        let inv = queued;
        let prepare = stage("prepare");
        let dep = self
            .deployment(&inv.deployment_id)
            .instrument(prepare.clone())
            .await?;
        let host = self.host_for(&dep.dep).instrument(prepare.clone()).await?;
        // The deployment's secrets, read now: an update applies from the next run on. What the
        // run produces is stored with their values redacted.
        let given = self
            .secrets
            .resolve(&dep.manifest.secrets)
            .instrument(prepare.clone())
            .await?;
        let redactor = Arc::new(given.redactor);
        let token = self.tokens.issue(id);
        let mut env: BTreeMap<String, String> = given.env;
        env.extend([
            ("OPENLOOP_API_URL".to_string(), python::API_URL.to_string()),
            ("OPENLOOP_TOKEN".to_string(), token.clone()),
            ("OPENLOOP_INVOCATION_ID".to_string(), id.to_string()),
        ]);
        let request: Value = serde_json::from_str(&inv.request).unwrap_or(Value::Null);
        {
            let mut running = lock(&self.running);
            if let Some(Running::CanceledEarly) = running.remove(id) {
                // Canceled after it was marked running, before it reached its warm process:
                // it is recorded `canceled` already, and nothing of it may start.
                drop(running);
                self.tokens.revoke(&token);
                self.notifier.invocation_changed(id);
                return Ok(());
            }
            running.insert(id.to_string(), Running::Host(host.clone()));
        }
        let (log_tx, log_rx) = openloop_runner::run::log_channel();
        let writer = tokio::spawn(write_logs(
            self.store.clone(),
            self.notifier.clone(),
            id.to_string(),
            log_rx,
            redactor.clone(),
        ));
        drop(prepare);
        let outcome = openloop_runner::run::run(
            &host,
            &self.channels,
            RunRequest {
                invocation_id: id.to_string(),
                function: inv.function_name.clone(),
                request,
                env,
                cgroup_name: format!("run-{}-{id}", self.config.instance_tag()),
                limits: self.run_limits(),
                log_limits: self.config.run_logs,
            },
            log_tx,
        )
        .instrument(stage("run"))
        .await;
        let _ = writer.instrument(stage("logs_flush")).await;
        lock(&self.running).remove(id);
        self.tokens.revoke(&token);
        if let Err(e) = self
            .devboxes
            .shutdown_for_invocation(id)
            .instrument(stage("devboxes"))
            .await
        {
            tracing::warn!(invocation = %id, error = %e, "could not shut down the run's devboxes");
        }
        let finish = stage("finish");
        match outcome {
            RunOutcome::Success(v) => {
                let v = redactor.redact_json(v);
                self.store
                    .finish_invocation(id, "success", Some(&v.to_string()), None)
                    .instrument(finish)
                    .await?
            }
            RunOutcome::Failure(e) => {
                let e = redactor.redact_json(e);
                self.store
                    .finish_invocation(id, "failure", None, Some(&e.to_string()))
                    .instrument(finish)
                    .await?
            }
        };
        self.notifier.invocation_changed(id);
        Ok(())
    }

    /// Cancel a queued or running invocation: its process tree is killed, its devboxes shut
    /// down, and its status becomes `canceled`.
    pub async fn cancel(&self, id: &str) -> ApiResult<Invocation> {
        let inv = self.store.get_invocation(id).await?;
        if inv.is_finished() {
            return Err(ApiError::Conflict(format!(
                "invocation {id} has already finished ({}); there is nothing to cancel",
                inv.status
            )));
        }
        // Read before the run can end: what it started goes with it.
        let children = self.run_slots(id).map(|r| r.children()).unwrap_or_default();
        let err = serde_json::json!({"type": "Canceled", "message": "the invocation was canceled", "traceback": null});
        self.store
            .finish_invocation(id, "canceled", None, Some(&err.to_string()))
            .await?;
        let host = {
            let mut running = lock(&self.running);
            match running.get(id) {
                Some(Running::Host(h)) => Some(h.clone()),
                _ => {
                    running.insert(id.to_string(), Running::CanceledEarly);
                    None
                }
            }
        };
        if let Some(h) = host {
            if let Err(e) = h.kill(id).await {
                tracing::warn!(invocation = %id, error = %e, "could not kill the canceled run");
            }
        }
        self.devboxes.shutdown_for_invocation(id).await?;
        self.notifier.invocation_changed(id);
        self.cancel_children(id, children).await;
        Ok(self.store.get_invocation(id).await?)
    }

    /// Wait until an invocation has finished, then return it.
    pub async fn wait_finished(&self, id: &str) -> ApiResult<Invocation> {
        let mut sub = self.notifier.subscribe(id);
        loop {
            let inv = self.store.get_invocation(id).await?;
            if inv.is_finished() {
                return Ok(inv);
            }
            sub.changed().await;
        }
    }

    /// Wait until `id` has finished, on behalf of `caller`. A run hands its slots back for the
    /// wait and takes them again before it goes on: the invocation it waits on may need them.
    pub async fn wait_for(&self, caller: &Principal, id: &str) -> ApiResult<Invocation> {
        let Some(run) = caller.invocation_id().and_then(|c| self.run_slots(c)) else {
            return self.wait_finished(id).await;
        };
        let wait = run.wait();
        let done = self.wait_finished(id).await;
        wait.resume().await;
        done
    }

    /// An invocation as `caller` may read it: any with an API key, and from a run only the
    /// invocations that run started.
    pub async fn get_for(&self, caller: &Principal, id: &str) -> ApiResult<Invocation> {
        let inv = self.store.get_invocation(id).await?;
        match caller.invocation_id() {
            Some(run) if inv.parent_invocation_id.as_deref() != Some(run) => {
                Err(ApiError::NotFound(format!(
                    "invocation '{id}' not found among the invocations this run ({run}) started"
                )))
            }
            _ => Ok(inv),
        }
    }

    /// Cancel what a canceled run started and has not finished, all the way down.
    async fn cancel_children(&self, parent: &str, children: Vec<String>) {
        for child in children {
            match Box::pin(self.cancel(&child)).await {
                Ok(_) | Err(ApiError::Conflict(_)) => {}
                Err(e) => {
                    tracing::warn!(invocation = %child, parent, error = %e, "could not cancel the child of a canceled run");
                }
            }
        }
    }

    fn run_slots(&self, id: &str) -> Option<Arc<RunSlots>> {
        lock(&self.in_flight).get(id).cloned()
    }

    /// How many calls deep a run in flight is (0: invoked with an API key).
    async fn depth_of_run(&self, id: &str) -> ApiResult<u32> {
        if let Some(run) = self.run_slots(id) {
            return Ok(run.depth);
        }
        self.depth_of(&self.store.get_invocation(id).await?).await
    }

    /// How many calls deep an invocation is: its parent's depth plus one, from memory while the
    /// parent runs, else read along the recorded parents (at most `max_call_depth + 1` reads:
    /// no chain is longer than the limit allows).
    async fn depth_of(&self, inv: &Invocation) -> ApiResult<u32> {
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

    /// After a restart: runs that were running are failed, queued ones run.
    pub async fn recover(self: &Arc<Self>) -> ApiResult<()> {
        for id in self.store.invocation_ids_with_status("running").await? {
            let inv = self.store.get_invocation(&id).await?;
            let retryable = match self.deployment(&inv.deployment_id).await {
                Ok(l) => l
                    .manifest
                    .function(&inv.function_name)
                    .map(|f| f.retryable)
                    .unwrap_or(false),
                Err(_) => false,
            };
            if retryable && self.store.requeue_invocation(&id).await? {
                tracing::info!(invocation = %id, "re-queued a retryable run cut short by the restart");
                continue;
            }
            let err = serde_json::json!({
                "type": "ServerRestarted",
                "message": "the server stopped while this invocation was running; invoke it again (or mark the function retryable)",
                "traceback": null,
            });
            self.store
                .finish_invocation(&id, "failure", None, Some(&err.to_string()))
                .await?;
        }
        let queued = self.store.invocation_ids_with_status("queued").await?;
        if !queued.is_empty() {
            tracing::info!(count = queued.len(), "resuming queued invocations");
        }
        for id in queued {
            self.spawn(id);
        }
        Ok(())
    }
}

/// A run in the table of runs in flight. Dropped when `execute` returns, however it returns:
/// the run leaves the table (and its parent's children) and its slots go back.
struct InFlight<'a> {
    table: &'a Mutex<HashMap<String, Arc<RunSlots>>>,
    id: String,
    run: Arc<RunSlots>,
}

impl<'a> InFlight<'a> {
    fn enter(invocations: &'a Invocations, id: &str, run: Arc<RunSlots>) -> Self {
        let table = &invocations.in_flight;
        lock(table).insert(id.to_string(), run.clone());
        InFlight {
            table,
            id: id.to_string(),
            run,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        {
            let mut m = lock(self.table);
            m.remove(&self.id);
            if let Some(parent) = self.run.parent.as_deref().and_then(|p| m.get(p)) {
                parent.remove_child(&self.id);
            }
        }
        self.run.end();
    }
}

/// A span of one stage of the invocation path (timed by `crate::stages`).
fn stage(name: &'static str) -> tracing::Span {
    crate::stages::span(name)
}
