//! Suspending a devbox and resuming it.
//!
//! A suspended devbox has no process, no cgroup and no mount: only its directory with its
//! disk image (its overlay upper layer inside) stays, so it holds disk, not memory, and it
//! survives a server restart. Resuming mounts the image again and starts a fresh sandbox
//! over it: the files are back; the processes start again from the launch commands and the
//! entrypoint, as Runloop documents. Executions running at suspension end, killed.
//!
//! What a resume needs is in the devbox's record: its launch parameters and network, its
//! environment variables sealed with the secrets key, and the names of its secrets (opened
//! again at resume, never stored in clear).

use super::*;
use crate::services::secrets::Redactor;
use openloop_store::secrets::Sealed;
use std::collections::HashSet;

/// The sealing name (associated data) of a devbox's environment; no secret can be named so.
fn env_sealing_name(id: &str) -> String {
    format!("devbox-env:{id}")
}

impl Devboxes {
    /// The lock that serializes lifecycle operations on one devbox.
    pub(super) fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.ops).entry(id.to_string()).or_default().clone()
    }

    /// A devbox's environment variables, sealed for its record (null when there are none).
    pub(super) fn seal_env(&self, id: &str, env: &BTreeMap<String, String>) -> ApiResult<Value> {
        if env.is_empty() {
            return Ok(Value::Null);
        }
        let text = serde_json::to_string(env).map_err(|e| ApiError::Internal(e.to_string()))?;
        let sealed = self.secrets.key().seal(&env_sealing_name(id), &text)?;
        Ok(json!({
            "key_id": sealed.key_id,
            "nonce": sealed.nonce,
            "ciphertext": sealed.ciphertext,
        }))
    }

    /// The environment a devbox starts with again (its variables and its secrets' values)
    /// and the redactor of those secrets.
    async fn open_env(
        &self,
        id: &str,
        spec: &Value,
    ) -> ApiResult<(BTreeMap<String, String>, Redactor)> {
        let mut env: BTreeMap<String, String> = match spec.get("environment") {
            Some(Value::Object(sealed)) => {
                let field = |k: &str| {
                    sealed
                        .get(k)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| {
                            ApiError::Internal(format!(
                                "devbox {id}'s stored environment lacks `{k}`"
                            ))
                        })
                };
                let sealed = Sealed {
                    key_id: field("key_id")?,
                    nonce: field("nonce")?,
                    ciphertext: field("ciphertext")?,
                };
                let text = self
                    .secrets
                    .key()
                    .open_sealed(&env_sealing_name(id), &sealed)?;
                serde_json::from_str(&text).map_err(|e| {
                    ApiError::Internal(format!("devbox {id}'s stored environment: {e}"))
                })?
            }
            _ => BTreeMap::new(),
        };
        let wanted: BTreeMap<String, String> = spec
            .get("secrets")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| ApiError::Internal(format!("devbox {id}'s stored secrets: {e}")))?
            .unwrap_or_default();
        // The secrets were checked against the creator when the devbox was created.
        let given = self.secrets.resolve(&wanted).await?;
        env.extend(given.env);
        Ok((env, given.redactor))
    }

    /// Suspend a running devbox (`POST /v1/devboxes/{id}/suspend`). The work runs in a task
    /// of its own, so a client that goes away does not leave it half done.
    pub async fn suspend(
        self: &Arc<Self>,
        id: &str,
        principal: &Principal,
    ) -> ApiResult<DevboxView> {
        self.authorized(id, principal).await?;
        let this = Arc::clone(self);
        let owned = id.to_string();
        tokio::spawn(async move { this.suspend_now(&owned, "suspended on request").await })
            .await
            .map_err(|e| ApiError::Internal(format!("suspending devbox {id}: {e}")))??;
        self.view(id).await
    }

    /// Suspend devbox `id` now: `suspending`, its executions killed, its sandbox and cgroups
    /// gone, its disk unmounted and kept; then `suspended` with `message`.
    pub(super) async fn suspend_now(&self, id: &str, message: &str) -> ApiResult<()> {
        let op = self.op_lock(id);
        let _one = op.lock().await;
        let rec = self.store.get_devbox(id).await?;
        let live = lock(&self.live).get(id).cloned();
        let live = match live {
            Some(l) if rec.status == "running" && l.devbox.exit_reason().is_none() => l,
            _ => {
                return Err(ApiError::Conflict(format!(
                    "devbox {id} is {}; only a running devbox can be suspended",
                    rec.status
                )))
            }
        };
        self.set_status(id, status("suspending")).await?;
        // Out of the live map first: no new command starts, and its watcher lets it go.
        lock(&self.live).remove(id);
        let running: Vec<Arc<Execution>> = lock(&self.executions)
            .values()
            .filter(|e| e.devbox_id == id && !e.is_completed())
            .cloned()
            .collect();
        for x in &running {
            x.kill();
        }
        if let Err(e) = live.devbox.suspend().await {
            // Its disk could not be let go safely: the devbox is lost.
            let message = format!("suspending failed: {e}");
            self.stop(id).await;
            self.remove_devbox_dir(id).await;
            self.fail(id, "execution_failed", &message).await?;
            return Err(ApiError::Internal(format!("devbox {id}: {message}")));
        }
        lock(&self.parked_output).insert(id.to_string(), live.output.clone());
        if rec.invocation_id.is_none() {
            // A suspended devbox holds its disk only: its place in the key's quota is free.
            self.release(id);
        }
        self.set_status(
            id,
            StatusChange {
                status: "suspended",
                message: Some(message),
                ..Default::default()
            },
        )
        .await
    }

    /// Resume a suspended devbox (`POST /v1/devboxes/{id}/resume`); answers once it runs
    /// again (or has failed), in a task of its own like [`Devboxes::suspend`].
    pub async fn resume(
        self: &Arc<Self>,
        id: &str,
        principal: &Principal,
    ) -> ApiResult<DevboxView> {
        self.authorized(id, principal).await?;
        let this = Arc::clone(self);
        let owned = id.to_string();
        tokio::spawn(async move { this.resume_now(&owned).await })
            .await
            .map_err(|e| ApiError::Internal(format!("resuming devbox {id}: {e}")))?
    }

    pub(super) async fn resume_now(self: &Arc<Self>, id: &str) -> ApiResult<DevboxView> {
        let op = self.op_lock(id);
        let _one = op.lock().await;
        let rec = self.store.get_devbox(id).await?;
        if rec.status != "suspended" {
            return Err(ApiError::Conflict(format!(
                "devbox {id} is {}; only a suspended devbox can be resumed",
                rec.status
            )));
        }
        let spec: Value = serde_json::from_str(&rec.spec)
            .map_err(|e| ApiError::Internal(format!("devbox {id}'s stored spec: {e}")))?;
        let params: LaunchParameters = spec
            .get("launch_parameters")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| ApiError::Internal(format!("devbox {id}'s stored parameters: {e}")))?
            .unwrap_or_default();
        let entrypoint = spec
            .get("entrypoint")
            .and_then(Value::as_str)
            .map(str::to_string);
        let req = CreateDevbox {
            launch_parameters: Some(params.clone()),
            network: spec
                .get("network")
                .and_then(Value::as_str)
                .map(str::to_string),
            ..Default::default()
        };
        let mut res = self.resources(&req)?;
        // A root devbox (asked for, or from a blueprint ending as root) stays one.
        res.root |= spec.get("root").and_then(Value::as_bool).unwrap_or(false);
        // Everything that can refuse the resume comes before it changes anything.
        let still_suspended = |e: ApiError| -> ApiError {
            ApiError::Conflict(format!("devbox {id} stays suspended: {e}"))
        };
        self.apply_network_policy(&params, &mut res)
            .await
            .map_err(still_suspended)?;
        let (env, redactor) = self.open_env(id, &spec).await.map_err(still_suspended)?;
        let owner = match (&rec.invocation_id, &rec.key_id) {
            (Some(run), _) => Owner::Run(run.clone()),
            (None, Some(key)) => Owner::Key(key.clone()),
            (None, None) => Owner::Key(String::new()),
        };
        // A run's suspended devbox kept its place; a key's takes one again.
        let reservation = if lock(&self.owners).contains_key(id) {
            None
        } else {
            Some(self.reserve_for(id, owner)?)
        };
        let lower = self.lower_layer_of(&rec).await.map_err(still_suspended)?;
        self.set_status(id, status("resuming")).await?;
        let sandbox = SandboxConfig {
            devbox_dir: self.config.devbox_dir(),
            image: self.base_image().await?,
            agent_layer: self.config.agent_layer_dir(),
            pool: None,
        };
        let started = Devbox::resume(
            &sandbox,
            DevboxSpec {
                id: id.to_string(),
                env,
                limits: res.limits,
                disk_bytes: res.disk_bytes,
                network: res.network,
                egress: res.egress.clone(),
                lower,
                root: res.root,
                sudo: self.config.devbox_sudo && !res.root,
            },
        )
        .await;
        let devbox = match started {
            Ok(d) => {
                d.set_workdir(
                    spec.get("workdir")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                );
                Arc::new(d)
            }
            Err(e) => {
                // Its disk is kept: it can be resumed again (or shut down).
                let message = format!("resuming failed ({e}); try again, or shut it down");
                self.set_status(
                    id,
                    StatusChange {
                        status: "suspended",
                        message: Some(&message),
                        ..Default::default()
                    },
                )
                .await?;
                return Err(ApiError::Unavailable(format!("devbox {id}: {message}")));
            }
        };
        if let Some(r) = reservation {
            r.keep();
        }
        let idle = rec.invocation_id.is_none() && !res.keep_alive.is_zero();
        let output = lock(&self.parked_output).remove(id);
        self.bring_up(BringUp {
            id,
            devbox,
            keep_alive: if idle { res.keep_alive } else { Duration::ZERO },
            on_idle: res.on_idle,
            idle_reason: if res.after_idle {
                "idle"
            } else {
                "keep_alive_timeout"
            },
            redactor: Arc::new(redactor),
            output,
            resumed: true,
            // The files written at creation are on its disk already.
            file_mounts: None,
            launch_commands: params.launch_commands.as_deref().unwrap_or_default(),
            entrypoint: entrypoint.as_deref(),
        })
        .await
    }

    /// Delete a devbox's directory (a suspended devbox's disk image) if any is left.
    pub(super) async fn remove_devbox_dir(&self, id: &str) {
        let dir = self.config.devbox_dir().join(id);
        let _ =
            tokio::task::spawn_blocking(move || openloop_sandbox::devbox::remove_dir(&dir)).await;
        lock(&self.parked_output).remove(id);
    }

    /// After a restart: the suspended devboxes whose disks are kept. A devbox that was
    /// suspending or resuming when the server stopped is suspended (it has no process now,
    /// its disk is intact); one whose disk is gone, or that a run created (its run is over),
    /// is shut down.
    pub(super) async fn keep_suspended(&self) -> ApiResult<HashSet<String>> {
        let mut keep = HashSet::new();
        for rec in self.store.suspended_devboxes(self.config.scope()).await? {
            let image = self
                .config
                .devbox_dir()
                .join(&rec.id)
                .join(openloop_sandbox::disk::IMAGE);
            if rec.invocation_id.is_some() || !image.exists() {
                self.set_status(
                    &rec.id,
                    StatusChange {
                        status: "shutdown",
                        shutdown_reason: Some("api_shutdown"),
                        message: Some(if rec.invocation_id.is_some() {
                            "the server restarted; the run that created this suspended devbox is over"
                        } else {
                            "the server restarted and this suspended devbox's disk is gone"
                        }),
                        ..Default::default()
                    },
                )
                .await?;
                continue;
            }
            if rec.status != "suspended" {
                let message = format!(
                    "the server restarted while the devbox was {}; it is suspended, resume it",
                    rec.status
                );
                self.set_status(
                    &rec.id,
                    StatusChange {
                        status: "suspended",
                        message: Some(&message),
                        ..Default::default()
                    },
                )
                .await?;
            }
            keep.insert(rec.id);
        }
        Ok(keep)
    }
}
