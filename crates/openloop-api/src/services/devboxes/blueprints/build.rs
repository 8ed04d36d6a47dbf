//! The build of a blueprint: a build sandbox (`openloop_sandbox::build`: root of its own
//! user namespace over the parent's layer or the base image, outbound network under the
//! egress rules), its absolute file mounts written, the Dockerfile's steps and the setup
//! commands run in order, every line of their output in the build log as it comes, and
//! what it wrote captured as the blueprint's layer.

use super::*;
use crate::services::secrets::Resolved;
use openloop_store::blueprints::BlueprintLogLine;

/// At most this many builds run at once; others wait `queued`.
const BUILD_SLOTS: usize = 2;
/// A build that takes longer fails.
const BUILD_TIME_LIMIT: Duration = Duration::from_secs(3600);

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
pub(super) struct Failure {
    pub(super) reason: &'static str,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn build(message: impl Into<String>) -> Self {
        Failure {
            reason: "build_failed",
            message: message.into(),
        }
    }
}

/// A build log being written: numbered lines, redacted, appended to the store.
pub(super) struct Log<'a> {
    store: &'a Store,
    id: String,
    seq: i64,
    redactor: Arc<crate::services::secrets::Redactor>,
}

impl Log<'_> {
    pub(super) async fn lines(&mut self, level: &str, text: &str) {
        let now = now_ms();
        let lines: Vec<BlueprintLogLine> = text
            .lines()
            .map(|l| BlueprintLogLine {
                level: level.to_string(),
                // PostgreSQL text holds no NUL.
                message: self.redactor.redact_string(l.replace('\0', "\u{FFFD}")),
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

    pub(super) async fn info(&mut self, text: &str) {
        self.lines("info", text).await
    }
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
            root: true,
            sudo: false,
        };
        let sandbox = self
            .start_sandbox(spec)
            .await
            .map_err(|e| Failure::build(format!("the build sandbox did not start: {e}")))?;
        let ran = self.run_plan(&sandbox, plan, secret_env, log).await;
        let ran = match ran {
            Err(mut f) => {
                let usage = sandbox.usage();
                let disk_full = matches!(
                    (usage.disk_used_bytes, usage.disk_size_bytes),
                    (Some(used), Some(size)) if used + (16 << 20) >= size
                );
                if sandbox.oom_killed() {
                    f.reason = "out_of_memory";
                } else if disk_full {
                    f.reason = "out_of_disk";
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
