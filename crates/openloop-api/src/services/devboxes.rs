//! Devboxes: records in the store, sandboxes in `openloop-sandbox`.

use crate::auth::Principal;
use crate::config::ServerConfig;
use crate::error::{ApiError, ApiResult};
use openloop_sandbox::cgroup::Limits;
use openloop_sandbox::{image, Devbox, DevboxSpec, SandboxConfig};
use openloop_store::devboxes::DevboxRecord;
use openloop_store::{now_ms, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Most output kept per stream for a synchronous exec.
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct LaunchParameters {
    #[serde(default)]
    pub launch_commands: Option<Vec<String>>,
    #[serde(default)]
    pub resource_size_request: Option<String>,
    #[serde(default)]
    pub custom_gb_memory: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct CreateDevbox {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub environment_variables: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub secrets: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub entrypoint: Option<String>,
    #[serde(default)]
    pub launch_parameters: Option<LaunchParameters>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

pub struct Devboxes {
    store: Store,
    config: Arc<ServerConfig>,
    image: OnceCell<PathBuf>,
    live: Mutex<HashMap<String, Arc<Devbox>>>,
}

impl Devboxes {
    pub fn new(store: Store, config: Arc<ServerConfig>) -> Self {
        Devboxes {
            store,
            config,
            image: OnceCell::new(),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// The base image, built on first use (concurrent callers wait for the one build).
    pub async fn base_image(&self) -> ApiResult<PathBuf> {
        self.image
            .get_or_try_init(|| {
                image::ensure_base_image(&self.config.image_dir, &self.config.debian_mirror)
            })
            .await
            .cloned()
            .map_err(|e| ApiError::Unavailable(e.to_string()))
    }

    fn limits(&self, params: &LaunchParameters) -> ApiResult<Limits> {
        let mut memory_mb = self.config.devbox_memory_mb;
        let mut cpus = 1;
        if let Some(size) = &params.resource_size_request {
            (memory_mb, cpus) = match size.as_str() {
                "X_SMALL" => (1024, 1),
                "SMALL" => (2048, 1),
                "MEDIUM" => (4096, 2),
                "LARGE" => (8192, 2),
                "X_LARGE" => (16384, 2),
                "XX_LARGE" => (16384, 2),
                "CUSTOM_SIZE" => (memory_mb, 1),
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "launch_parameters.resource_size_request: unknown size '{other}'; use X_SMALL, SMALL, MEDIUM, LARGE, X_LARGE or CUSTOM_SIZE"
                    )))
                }
            };
        }
        if let Some(gb) = params.custom_gb_memory {
            memory_mb = gb * 1024;
        }
        Ok(Limits {
            memory_bytes: memory_mb << 20,
            pids: self.config.devbox_pids,
            cpu_shares: 1024 * cpus,
        })
    }

    pub async fn create(&self, req: CreateDevbox, principal: &Principal) -> ApiResult<Value> {
        let params = req.launch_parameters.clone().unwrap_or_default();
        let limits = self.limits(&params)?;
        let mut env = req.environment_variables.clone().unwrap_or_default();
        env.extend(req.secrets.clone().unwrap_or_default());
        for k in env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(ApiError::BadRequest(format!(
                    "environment variable name {k:?} is not valid"
                )));
            }
        }
        let id = openloop_store::new_id("dbx");
        let spec_json = json!({
            "name": req.name,
            "launch_parameters": params,
            "entrypoint": req.entrypoint,
            "metadata": req.metadata.clone().unwrap_or_default(),
            "environment_variable_names": req.environment_variables.as_ref().map(|e| e.keys().cloned().collect::<Vec<_>>()),
        });
        let record = DevboxRecord {
            id: id.clone(),
            name: req.name.clone(),
            status: "provisioning".into(),
            invocation_id: principal.invocation_id().map(str::to_string),
            failure_reason: None,
            spec: spec_json.to_string(),
            created_at_ms: now_ms(),
            ended_at_ms: None,
        };
        self.store.insert_devbox(&record).await?;
        let image = match self.base_image().await {
            Ok(i) => i,
            Err(e) => {
                self.store
                    .set_devbox_status(&id, "failure", Some(&e.to_string()))
                    .await?;
                return Err(e);
            }
        };
        let sandbox = SandboxConfig {
            devbox_dir: self.config.devbox_dir(),
            image,
            agent_bin: self.config.agent_bin.clone(),
        };
        let devbox = match Devbox::start(
            &sandbox,
            DevboxSpec {
                id: id.clone(),
                env,
                limits,
            },
        )
        .await
        {
            Ok(d) => Arc::new(d),
            Err(e) => {
                self.store
                    .set_devbox_status(&id, "failure", Some(&e.to_string()))
                    .await?;
                return Err(ApiError::Internal(format!(
                    "devbox {id} failed to start: {e}"
                )));
            }
        };
        self.live
            .lock()
            .map(|mut m| m.insert(id.clone(), devbox.clone()))
            .ok();
        self.store
            .set_devbox_status(&id, "initializing", None)
            .await?;
        for cmd in params.launch_commands.iter().flatten() {
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
                self.stop(&id).await;
                self.store
                    .set_devbox_status(&id, "failure", Some(&reason))
                    .await?;
                return self.view(&id).await;
            }
        }
        if let Some(entry) = req.entrypoint.as_deref().filter(|e| !e.trim().is_empty()) {
            // The entrypoint runs in the background for the devbox's life.
            let cmd = format!(
                "nohup bash -c {} >/home/user/.entrypoint.log 2>&1 &",
                shell_quote(entry)
            );
            devbox.exec(&cmd, BTreeMap::new(), None, 1024, None).await?;
        }
        self.store.set_devbox_status(&id, "running", None).await?;
        self.view(&id).await
    }

    /// A devbox the caller may use (its own when the caller is a run).
    pub async fn authorized(&self, id: &str, principal: &Principal) -> ApiResult<DevboxRecord> {
        let rec = self.store.get_devbox(id).await?;
        if let Some(inv) = principal.invocation_id() {
            if rec.invocation_id.as_deref() != Some(inv) {
                return Err(ApiError::NotFound(format!("devbox '{id}' not found")));
            }
        }
        Ok(rec)
    }

    /// The live sandbox of a devbox the caller may use.
    pub async fn running(&self, id: &str, principal: &Principal) -> ApiResult<Arc<Devbox>> {
        let rec = self.authorized(id, principal).await?;
        let live = self.live.lock().ok().and_then(|m| m.get(id).cloned());
        match live {
            Some(d) if d.exit_reason().is_none() => Ok(d),
            Some(d) => {
                let reason = if d.oom_killed() {
                    "the devbox ran out of memory and was stopped".to_string()
                } else {
                    d.exit_reason().unwrap_or_default()
                };
                self.stop(id).await;
                self.store
                    .set_devbox_status(id, "failure", Some(&reason))
                    .await?;
                Err(ApiError::Conflict(format!(
                    "devbox {id} is not running: {reason}"
                )))
            }
            None => Err(ApiError::Conflict(format!(
                "devbox {id} is not running (status {}); create a new devbox",
                rec.status
            ))),
        }
    }

    pub async fn view(&self, id: &str) -> ApiResult<Value> {
        Ok(devbox_view(&self.store.get_devbox(id).await?))
    }

    async fn stop(&self, id: &str) {
        let d = self.live.lock().ok().and_then(|mut m| m.remove(id));
        if let Some(d) = d {
            d.shutdown().await;
        }
    }

    pub async fn shutdown(&self, id: &str, reason: Option<&str>) -> ApiResult<()> {
        self.stop(id).await;
        let rec = self.store.get_devbox(id).await?;
        if !matches!(rec.status.as_str(), "shutdown" | "failure") {
            self.store.set_devbox_status(id, "shutdown", reason).await?;
        }
        Ok(())
    }

    /// Shut down every devbox a run created.
    pub async fn shutdown_for_invocation(&self, invocation_id: &str) -> ApiResult<()> {
        for id in self.store.devbox_ids_of_invocation(invocation_id).await? {
            self.shutdown(&id, Some("the invocation that created it ended"))
                .await?;
        }
        Ok(())
    }

    /// After a restart: no sandbox survives, so clean their remains and records.
    pub async fn recover(&self) -> ApiResult<()> {
        let dir = self.config.devbox_dir();
        let ids =
            tokio::task::spawn_blocking(move || openloop_sandbox::devbox::clean_leftovers(&dir))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        if !ids.is_empty() {
            tracing::info!(
                count = ids.len(),
                "removed devboxes left by a previous server process"
            );
        }
        self.store
            .shut_down_live_devboxes("the server restarted; devboxes do not survive a restart")
            .await?;
        Ok(())
    }

    pub async fn shutdown_all(&self) {
        let ids: Vec<String> = self
            .live
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            let _ = self.shutdown(&id, Some("the server stopped")).await;
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The Runloop `DevboxView` shape.
pub fn devbox_view(r: &DevboxRecord) -> Value {
    let spec: Value = serde_json::from_str(&r.spec).unwrap_or(Value::Null);
    json!({
        "id": r.id,
        "name": r.name,
        "status": r.status,
        "create_time_ms": r.created_at_ms,
        "end_time_ms": r.ended_at_ms,
        "failure_reason": r.failure_reason,
        "shutdown_reason": if r.status == "shutdown" { r.failure_reason.clone() } else { None },
        "initiator_type": if r.invocation_id.is_some() { "invocation" } else { "api" },
        "initiator_id": r.invocation_id,
        "launch_parameters": spec.get("launch_parameters").cloned().unwrap_or(json!({})),
        "metadata": spec.get("metadata").cloned().unwrap_or(json!({})),
        "capabilities": [],
        "blueprint_id": null,
        "snapshot_id": null,
    })
}
