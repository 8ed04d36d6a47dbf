//! Creating a devbox: its shape, quota and layers checked, a sandbox from the warm pool or
//! started for it, then brought up (file mounts, launch commands, entrypoint) and `running`.
//! Resuming a suspended devbox (`suspend`) brings its new sandbox up the same way.

use super::*;

impl Devboxes {
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
    pub(super) async fn apply_network_policy(
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
    pub(super) async fn bring_up(self: &Arc<Self>, b: BringUp<'_>) -> ApiResult<DevboxView> {
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

    pub(super) async fn start_sandbox(&self, spec: DevboxSpec) -> ApiResult<Arc<Devbox>> {
        let id = spec.id.clone();
        let sandbox = SandboxConfig {
            devbox_dir: self.config.devbox_dir(),
            image: self.base_image().await?,
            agent_layer: self.config.agent_layer_dir(),
            pool: self.pool.clone(),
        };
        // Mounting the overlay and making the cgroups block: on the blocking pool, so a start
        // (a warm pool refill, say) does not hold up a runtime thread serving other requests.
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || handle.block_on(Devbox::start(&sandbox, spec)))
            .await
            .map_err(|e| ApiError::Internal(format!("devbox {id} failed to start: {e}")))?
            .map(Arc::new)
            .map_err(|e| ApiError::Internal(format!("devbox {id} failed to start: {e}")))
    }
}

/// What [`Devboxes::bring_up`] makes of a started sandbox.
pub(super) struct BringUp<'a> {
    pub(super) id: &'a str,
    pub(super) devbox: Arc<Devbox>,
    /// Idle time before `on_idle` (zero: never).
    pub(super) keep_alive: Duration,
    pub(super) on_idle: OnIdle,
    pub(super) idle_reason: &'static str,
    pub(super) redactor: Arc<crate::services::secrets::Redactor>,
    /// The execution output store to keep (a resumed devbox's), else a new one.
    pub(super) output: Option<OutputStore>,
    /// Whether the devbox is being resumed (not created).
    pub(super) resumed: bool,
    pub(super) file_mounts: Option<&'a BTreeMap<String, String>>,
    pub(super) launch_commands: &'a [String],
    pub(super) entrypoint: Option<&'a str>,
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

pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
