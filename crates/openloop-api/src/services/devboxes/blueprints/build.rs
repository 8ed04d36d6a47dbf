//! The build of a blueprint: a build sandbox (`openloop_sandbox::build`: root of its own
//! user namespace over the parent's layer or the base image, outbound network under the
//! egress rules), its absolute file mounts written, the Dockerfile's steps and the setup
//! commands run in order, every line of their output in the build log as it comes, and
//! what it wrote captured as the blueprint's layer.

use super::dockerfile::{self, Step};
use super::*;
use crate::services::secrets::Resolved;
use openloop_sandbox::agent::OutputChunk;
use openloop_store::blueprints::BlueprintLogLine;

/// At most this many builds run at once; others wait `queued`.
const BUILD_SLOTS: usize = 2;
/// A build that takes longer fails.
const BUILD_TIME_LIMIT: Duration = Duration::from_secs(3600);
/// Output of one step kept in memory past what is streamed to the log (bytes per stream).
const STEP_OUTPUT: usize = 64 * 1024;

/// Build slots, and one lock per content hash so identical builds run once.
pub(in crate::services::devboxes) struct Builds {
    slots: tokio::sync::Semaphore,
    content: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Default for Builds {
    fn default() -> Self {
        Builds {
            slots: tokio::sync::Semaphore::new(BUILD_SLOTS),
            content: Mutex::new(HashMap::new()),
        }
    }
}

impl Builds {
    /// The lock of one content hash (held while its layer is built, reused or removed).
    pub(super) fn content_lock(&self, hash: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.content)
            .entry(hash.to_string())
            .or_default()
            .clone()
    }
}

/// Why a build failed: Runloop's failure reason and the log's last word.
struct Failure {
    reason: &'static str,
    message: String,
}

impl Failure {
    fn build(message: impl Into<String>) -> Self {
        Failure {
            reason: "build_failed",
            message: message.into(),
        }
    }
}

/// A build log being written: numbered lines, redacted, appended to the store.
struct Log<'a> {
    store: &'a Store,
    id: String,
    seq: i64,
    redactor: Arc<crate::services::secrets::Redactor>,
}

impl Log<'_> {
    async fn lines(&mut self, level: &str, text: &str) {
        let now = now_ms();
        let lines: Vec<BlueprintLogLine> = text
            .lines()
            .map(|l| BlueprintLogLine {
                level: level.to_string(),
                message: self.redactor.redact_string(l.to_string()),
                timestamp_ms: now,
            })
            .collect();
        if let Err(e) = self
            .store
            .append_blueprint_logs(&self.id, self.seq, &lines)
            .await
        {
            tracing::warn!(blueprint = %self.id, error = %e, "could not record build log lines");
        }
        self.seq += lines.len() as i64;
    }

    async fn info(&mut self, text: &str) {
        self.lines("info", text).await
    }
}

/// What the steps so far have set.
struct State {
    env: BTreeMap<String, String>,
    args: BTreeMap<String, String>,
    workdir: String,
    root: bool,
}

impl Devboxes {
    /// The build task of blueprint `bp`: waits for a slot and for an identical build, then
    /// reuses that layer or builds its own; records the outcome.
    pub(super) async fn build_blueprint(
        self: Arc<Self>,
        bp: BlueprintRecord,
        plan: Plan,
        egress: Option<EgressPolicy>,
        secrets: Resolved,
    ) {
        let mut log = Log {
            store: &self.store,
            id: bp.id.clone(),
            seq: 0,
            redactor: Arc::new(secrets.redactor),
        };
        log.info(&format!("queued: layer {}", &bp.content_hash[..16]))
            .await;
        let _slot = self.builds.slots.acquire().await;
        let content = self.builds.content_lock(&bp.content_hash);
        let _content = content.lock().await;
        let layer = self.blueprint_layer(&bp.content_hash);
        let started = std::time::Instant::now();
        let outcome = if layer.exists() {
            log.info("identical content was built before: its layer is reused")
                .await;
            Ok(())
        } else {
            self.mark_blueprint(&bp.id, "building", None).await;
            log.info("building").await;
            let env = secrets.env;
            match tokio::time::timeout(
                BUILD_TIME_LIMIT,
                self.build_layer(&plan, egress, env, &layer, &mut log),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(Failure::build(format!(
                    "the build took longer than {} s",
                    BUILD_TIME_LIMIT.as_secs()
                ))),
            }
        };
        match outcome {
            Ok(()) => {
                log.info(&format!(
                    "build complete in {:.2} s",
                    started.elapsed().as_secs_f64()
                ))
                .await;
                self.mark_blueprint(&bp.id, "build_complete", None).await;
            }
            Err(f) => {
                log.lines("error", &format!("build failed: {}", f.message))
                    .await;
                self.mark_blueprint(&bp.id, "failed", Some(f.reason)).await;
            }
        }
    }

    async fn mark_blueprint(&self, id: &str, status: &str, reason: Option<&str>) {
        let finished = matches!(status, "build_complete" | "failed").then(now_ms);
        if let Err(e) = self
            .store
            .set_blueprint_status(id, status, reason, finished)
            .await
        {
            tracing::error!(blueprint = %id, error = %e, "could not record a build's status");
        }
        self.notifier.notify(id);
    }

    /// Start the build sandbox, run the plan in it, capture its layer into `layer`.
    async fn build_layer(
        &self,
        plan: &Plan,
        egress: Option<EgressPolicy>,
        secret_env: BTreeMap<String, String>,
        layer: &std::path::Path,
        log: &mut Log<'_>,
    ) -> Result<(), Failure> {
        let res = self
            .default_resources()
            .ok_or_else(|| Failure::build("no default devbox shape"))?;
        let parent = plan
            .parent
            .as_ref()
            .map(|p| self.blueprint_layer(&p.content_hash));
        let spec = DevboxSpec {
            id: openloop_store::new_id("bld"),
            env: BTreeMap::new(),
            limits: res.limits,
            disk_bytes: res.disk_bytes,
            network: true,
            egress,
            lower: parent.clone(),
            build: true,
        };
        let sandbox = self
            .start_sandbox(spec)
            .await
            .map_err(|e| Failure::build(format!("the build sandbox did not start: {e}")))?;
        let ran = self.run_plan(&sandbox, plan, secret_env, log).await;
        let ran = match ran {
            Err(mut f) => {
                if sandbox.oom_killed() {
                    f.reason = "out_of_memory";
                }
                Err(f)
            }
            Ok(()) => {
                let dir = self.blueprints_dir();
                let prepared = async {
                    use std::os::unix::fs::PermissionsExt;
                    tokio::fs::create_dir_all(&dir).await?;
                    tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).await
                }
                .await;
                match prepared {
                    Err(e) => Err(Failure::build(format!("preparing {}: {e}", dir.display()))),
                    Ok(()) => match sandbox.capture_build(parent, layer.to_path_buf()).await {
                        Ok(size) => {
                            log.info(&format!("captured the layer: {size} bytes")).await;
                            Ok(())
                        }
                        Err(e) => Err(Failure::build(e.to_string())),
                    },
                }
            }
        };
        sandbox.shutdown().await;
        ran
    }

    /// The absolute file mounts, then each step, then the setup commands.
    async fn run_plan(
        &self,
        sandbox: &Devbox,
        plan: &Plan,
        secret_env: BTreeMap<String, String>,
        log: &mut Log<'_>,
    ) -> Result<(), Failure> {
        let parent_image = plan
            .parent
            .as_ref()
            .and_then(|p| serde_json::from_str::<dockerfile::ImageConfig>(&p.image).ok())
            .unwrap_or_default();
        let mut state = State {
            env: parent_image.env,
            args: BTreeMap::new(),
            workdir: parent_image.workdir.unwrap_or_else(|| "/".into()),
            root: true,
        };
        for (path, contents) in &plan.mounts {
            log.info(&format!("file mount {path}")).await;
            sandbox
                .write_file(path, contents.as_bytes())
                .await
                .map_err(|e| Failure::build(format!("file mount {path}: {e}")))?;
        }
        // The setup commands come last, as root.
        let setup: Vec<Step> = match plan.setup.is_empty() {
            true => Vec::new(),
            false => std::iter::once(Step::User("root".into()))
                .chain(plan.setup.iter().map(|c| Step::Run(c.clone())))
                .collect(),
        };
        for step in plan.dockerfile.steps.iter().chain(&setup) {
            match step {
                Step::Run(cmd) => {
                    log.info(&format!("RUN {cmd}")).await;
                    self.run_step(sandbox, cmd, &state, &secret_env, log)
                        .await?;
                }
                Step::Env(pairs) => {
                    for (k, v) in pairs {
                        log.info(&format!("ENV {k}={v}")).await;
                        state.env.insert(k.clone(), v.clone());
                    }
                }
                Step::Arg(k, default) => {
                    match plan.build_args.get(k).or(default.as_ref()) {
                        Some(v) => state.args.insert(k.clone(), v.clone()),
                        None => state.args.remove(k),
                    };
                }
                Step::Workdir(dir) => {
                    state.workdir = join_path(&state.workdir, dir);
                    log.info(&format!("WORKDIR {}", state.workdir)).await;
                    let as_root = State {
                        root: true,
                        ..clone_state(&state)
                    };
                    let cmd = format!("mkdir -p -- {}", shell_quote(&state.workdir));
                    self.run_quiet(sandbox, &cmd, &as_root).await?;
                }
                Step::User(who) => {
                    log.info(&format!("USER {who}")).await;
                    state.root = dockerfile::is_root_user(who).map_err(Failure::build)?;
                }
                Step::Copy {
                    sources,
                    dest,
                    chown,
                } => {
                    self.copy_step(sandbox, plan, sources, dest, chown.as_deref(), &state, log)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// `COPY`: context files written as root, owned by `chown` if given.
    #[allow(clippy::too_many_arguments)]
    async fn copy_step(
        &self,
        sandbox: &Devbox,
        plan: &Plan,
        sources: &[String],
        dest: &str,
        chown: Option<&str>,
        state: &State,
        log: &mut Log<'_>,
    ) -> Result<(), Failure> {
        let dest_path = join_path(&state.workdir, dest);
        let into_dir = dest.ends_with('/') || sources.len() > 1;
        let mut written = Vec::new();
        for src in sources {
            let prefix = format!("{src}/");
            for (key, contents) in &plan.context {
                let target = if key == src && !into_dir {
                    dest_path.clone()
                } else if key == src {
                    join_path(&dest_path, key.rsplit('/').next().unwrap_or(key))
                } else if src.is_empty() {
                    join_path(&dest_path, key)
                } else if let Some(rest) = key.strip_prefix(&prefix) {
                    join_path(&dest_path, rest)
                } else {
                    continue;
                };
                sandbox
                    .write_file(&target, contents.as_bytes())
                    .await
                    .map_err(|e| Failure::build(format!("COPY {key} to {target}: {e}")))?;
                written.push(target);
            }
        }
        log.info(&format!(
            "COPY {} -> {dest_path} ({} file(s))",
            sources.join(" "),
            written.len()
        ))
        .await;
        if let Some(who) = chown {
            let ids = match dockerfile::is_root_user(who).map_err(Failure::build)? {
                true => "0:0",
                false => "1000:1000",
            };
            let quoted: Vec<String> = written.iter().map(|p| shell_quote(p)).collect();
            let as_root = State {
                root: true,
                ..clone_state(state)
            };
            let cmd = format!("chown {ids} -- {}", quoted.join(" "));
            self.run_quiet(sandbox, &cmd, &as_root).await?;
        }
        Ok(())
    }

    /// The environment and command line of a step run as the state's user.
    fn step_command(
        cmd: &str,
        state: &State,
        secret_env: &BTreeMap<String, String>,
    ) -> (String, BTreeMap<String, String>) {
        let mut env = BTreeMap::new();
        let (home, user) = match state.root {
            true => ("/root", "root"),
            false => ("/home/user", "user"),
        };
        for (k, v) in [("HOME", home), ("USER", user), ("LOGNAME", user)] {
            env.insert(k.to_string(), v.to_string());
        }
        env.extend(state.args.clone());
        env.extend(state.env.clone());
        env.extend(secret_env.clone());
        let line = match state.root {
            true => cmd.to_string(),
            // The build's root may become the devbox user, mapped in its namespace.
            false => format!(
                "exec setpriv --reuid=1000 --regid=1000 --clear-groups -- /bin/bash -c {}",
                shell_quote(cmd)
            ),
        };
        (line, env)
    }

    /// Run one `RUN` (or setup command), its output into the log line by line as it comes.
    async fn run_step(
        &self,
        sandbox: &Devbox,
        cmd: &str,
        state: &State,
        secret_env: &BTreeMap<String, String>,
        log: &mut Log<'_>,
    ) -> Result<(), Failure> {
        let (line, env) = Self::step_command(cmd, state, secret_env);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let exec = sandbox.exec(
            &line,
            env,
            Some(state.workdir.clone()),
            STEP_OUTPUT,
            Some(tx),
        );
        tokio::pin!(exec);
        let mut pending: Vec<u8> = Vec::new();
        let out = loop {
            tokio::select! {
                out = &mut exec => break out,
                Some(chunk) = rx.recv() => {
                    let (OutputChunk::Stdout(b) | OutputChunk::Stderr(b)) = chunk;
                    pending.extend_from_slice(&b);
                    if let Some(end) = pending.iter().rposition(|&c| c == b'\n') {
                        let done: Vec<u8> = pending.drain(..=end).collect();
                        log.info(&String::from_utf8_lossy(&done)).await;
                    }
                }
            }
        };
        while let Ok(chunk) = rx.try_recv() {
            let (OutputChunk::Stdout(b) | OutputChunk::Stderr(b)) = chunk;
            pending.extend_from_slice(&b);
        }
        if !pending.is_empty() {
            log.info(&String::from_utf8_lossy(&pending)).await;
        }
        let out = out.map_err(|e| Failure::build(format!("RUN {cmd}: {e}")))?;
        match out.exit.shell_code() {
            0 => Ok(()),
            code => Err(Failure::build(format!("RUN {cmd} exited with {code}"))),
        }
    }

    /// A command of the build's own (no log unless it fails).
    async fn run_quiet(&self, sandbox: &Devbox, cmd: &str, state: &State) -> Result<(), Failure> {
        let (line, env) = Self::step_command(cmd, state, &BTreeMap::new());
        let out = sandbox
            .exec(&line, env, Some("/".into()), STEP_OUTPUT, None)
            .await
            .map_err(|e| Failure::build(format!("{cmd}: {e}")))?;
        match out.exit.shell_code() {
            0 => Ok(()),
            code => Err(Failure::build(format!(
                "{cmd} exited with {code}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }

    /// After a restart: builds a stopped server left unfinished failed; layers no built
    /// blueprint names (and half-captured ones) are removed.
    pub(in crate::services::devboxes) async fn recover_blueprints(&self) -> ApiResult<()> {
        let failed = self.store.fail_unfinished_blueprints(now_ms()).await?;
        for id in &failed {
            let line = BlueprintLogLine {
                level: "error".into(),
                message:
                    "build failed: the server stopped during the build; create the blueprint again"
                        .into(),
                timestamp_ms: now_ms(),
            };
            let seq = self.store.blueprint_logs(id).await?.len() as i64;
            self.store.append_blueprint_logs(id, seq, &[line]).await?;
        }
        let keep: std::collections::HashSet<String> = self
            .store
            .live_blueprint_layers()
            .await?
            .into_iter()
            .collect();
        let dir = self.blueprints_dir();
        tokio::task::spawn_blocking(move || {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !keep.contains(&name) {
                    if let Err(err) = openloop_sandbox::snapshot::remove(&e.path()) {
                        tracing::warn!(path = %e.path().display(), error = %err, "could not remove a stale blueprint layer");
                    }
                }
            }
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
    }
}

fn clone_state(s: &State) -> State {
    State {
        env: s.env.clone(),
        args: s.args.clone(),
        workdir: s.workdir.clone(),
        root: s.root,
    }
}
