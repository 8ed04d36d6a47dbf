//! Deployments: building in the background and switching the project over on success.

use crate::config::ServerConfig;
use crate::error::{ApiError, ApiResult};
use crate::notify::Notifier;
use crate::services::invocations::Invocations;
use crate::services::secrets::Secrets;
use openloop_deploy::venv::VenvSettings;
use openloop_deploy::{source, BuildSandbox, BuildSettings};
use openloop_sandbox::cgroup::Limits;
use openloop_store::deployments::Deployment;
use openloop_store::Store;
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What to deploy.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateDeployment {
    /// A directory on the server or a git URL (`https://`, `file://`, a bare repository path).
    pub source: String,
    /// A git branch, tag or commit (git sources only).
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    /// Project name; defaults to the repository's directory or git name.
    #[serde(default)]
    pub name: Option<String>,
}

pub struct Deployments {
    store: Store,
    config: Arc<ServerConfig>,
    notifier: Notifier,
    invocations: Arc<Invocations>,
    secrets: Arc<Secrets>,
}

pub fn valid_project_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
}

impl Deployments {
    pub fn new(
        store: Store,
        config: Arc<ServerConfig>,
        notifier: Notifier,
        invocations: Arc<Invocations>,
        secrets: Arc<Secrets>,
    ) -> Self {
        Deployments {
            store,
            config,
            notifier,
            invocations,
            secrets,
        }
    }

    pub async fn create(self: &Arc<Self>, req: CreateDeployment) -> ApiResult<Deployment> {
        let src = req.source.trim();
        if src.is_empty() {
            return Err(ApiError::BadRequest(
                "`source` must be a directory on the server or a git URL".into(),
            ));
        }
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| source::project_name(src));
        if !valid_project_name(&name) {
            return Err(ApiError::BadRequest(format!(
                "project name {name:?} may only hold letters, digits, '_', '-' and '.'; pass `name` to choose one"
            )));
        }
        let dep = self
            .store
            .create_deployment(&name, src, req.git_ref.as_deref(), &self.config.node_id)
            .await?;
        self.notifier.notify(crate::notify::ANY_DEPLOYMENT);
        let this = Arc::clone(self);
        let id = dep.id.clone();
        tokio::spawn(async move { this.build(id).await });
        Ok(dep)
    }

    async fn build(&self, id: String) {
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(write_build_log(
            self.store.clone(),
            self.notifier.clone(),
            id.clone(),
            rx,
        ));
        let result = self.run_build(&id, &tx).await;
        match &result {
            Ok(_) => {
                tx.send("deployed: new invocations of the project now run this deployment".into())
            }
            Err(e) => tx.send(format!("build failed: {e}")),
        }
        .ok();
        drop(tx);
        let _ = writer.await;
        // The status changes only after the whole log is stored, so a follower sees every line.
        let recorded = match result {
            Ok(ready) => self.go_live(&ready).await,
            Err(e) => self
                .store
                .mark_deployment_failed(&id, &e.to_string())
                .await
                .map_err(Into::into),
        };
        if let Err(e) = recorded {
            tracing::error!(deployment = %id, error = %e, "could not record the build's outcome");
            let _ = self.store.mark_deployment_failed(&id, &e.to_string()).await;
        }
        self.notifier.deployment_changed(&id);
    }

    async fn go_live(&self, ready: &Deployment) -> ApiResult<()> {
        let manifest = ready.manifest.as_deref().unwrap_or("{}");
        self.store
            .mark_deployment_deployed(
                &ready.id,
                &ready.project_name,
                manifest,
                ready.source_hash.as_deref(),
            )
            .await?;
        Ok(self.invocations.activate(ready).await?)
    }

    /// Build, then start the warm process; returns the deployment with its manifest.
    async fn run_build(
        &self,
        id: &str,
        log: &mpsc::UnboundedSender<String>,
    ) -> ApiResult<Deployment> {
        self.store.mark_deployment_building(id).await?;
        self.notifier.deployment_changed(id);
        let dep = self.store.get_deployment(id).await?;
        let settings = build_settings(&self.config, id);
        let dest = self.config.deployments_dir().join(id);
        let out = openloop_deploy::build(
            &settings,
            &dep.project_name,
            &dep.source,
            dep.git_ref.as_deref(),
            dest,
            log,
        )
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        // Every secret runloop.toml names must exist now; its value is read at each run's start.
        self.secrets.check_exist(&out.manifest.secrets).await?;
        let manifest =
            serde_json::to_string(&out.manifest).map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut ready = dep;
        if self.config.is_cluster() {
            // The other nodes build the same environment from this archive, lazily.
            let repo = std::path::PathBuf::from(&out.manifest.source_dir);
            let (hash, archive) =
                tokio::task::spawn_blocking(move || openloop_deploy::archive::pack(&repo))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            self.store.put_deployment_source(&hash, &archive).await?;
            let _ = log.send(format!(
                "stored the source ({} KiB, sha256 {}) for the cluster's other nodes",
                archive.len().div_ceil(1024),
                &hash[..12]
            ));
            ready.source_hash = Some(hash);
        }
        let _ = log.send("starting the warm Python process".into());
        ready.manifest = Some(manifest);
        self.invocations.host_for(&ready).await?;
        Ok(ready)
    }

    /// After a restart: builds in progress are failed.
    pub async fn recover(&self) -> ApiResult<()> {
        self.store
            .fail_unfinished_deployments(
                "the server stopped during the build; deploy again",
                self.config.scope(),
            )
            .await?;
        Ok(())
    }
}

async fn write_build_log(
    store: Store,
    notifier: Notifier,
    id: String,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    let mut seq = 0i64;
    while let Some(line) = rx.recv().await {
        seq += 1;
        if let Err(e) = store.append_deployment_log(&id, seq, &line).await {
            tracing::error!(deployment = %id, error = %e, "could not store a build log line");
        }
        notifier.notify(&id);
    }
}

/// How this node builds a deployment (its environment cache, its build sandbox).
pub(crate) fn build_settings(config: &ServerConfig, id: &str) -> BuildSettings {
    BuildSettings {
        venv: VenvSettings {
            uv: config.uv.clone(),
            python: config.python.clone(),
            cache_dir: config.venv_dir(),
            uv_cache_dir: config.data_dir.join("uv-cache"),
        },
        sandbox: BuildSandbox::new(
            config.launcher.clone(),
            config.data_dir.join("scratch").join(format!("build-{id}")),
            format!("build-{}-{id}", config.instance_tag()),
            Limits {
                memory_bytes: config.build_memory_mb << 20,
                pids: 1024,
                cpu_shares: 1024,
            },
        ),
    }
}
