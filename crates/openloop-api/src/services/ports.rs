//! The API's services as the run engine sees them (`openloop_engine::ports`): run tokens,
//! a run's devboxes, secrets and network policies, each behind the narrow trait the engine
//! asks for. Their errors pass through the engine unchanged ([`EngineError::Port`]) and come
//! back out as the same [`ApiError`].

use crate::auth::Tokens;
use crate::error::ApiError;
use crate::services::devboxes::Devboxes;
use crate::services::network_policies::NetworkPolicies;
use crate::services::secrets::{Redactor, Secrets};
use openloop_deploy::Manifest;
use openloop_engine::ports::{self, BoxFuture, RunSecrets};
use openloop_engine::{EngineError, EngineResult};
use openloop_sandbox::egress::EgressPolicy;
use openloop_store::deployments::Deployment;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

fn port(e: ApiError) -> EngineError {
    EngineError::Port(Box::new(e))
}

impl ports::RunTokens for Tokens {
    fn issue(&self, invocation_id: &str) -> String {
        Tokens::issue(self, invocation_id)
    }
    fn revoke(&self, token: &str) {
        Tokens::revoke(self, token)
    }
}

impl ports::RunDevboxes for Devboxes {
    fn shutdown_for_invocation<'a>(
        &'a self,
        invocation_id: &'a str,
    ) -> BoxFuture<'a, EngineResult<()>> {
        Box::pin(async move {
            Devboxes::shutdown_for_invocation(self, invocation_id)
                .await
                .map_err(port)
        })
    }

    fn shutdown_all_local(&self) -> BoxFuture<'_, ()> {
        Box::pin(Devboxes::shutdown_all(self))
    }
}

/// Deployments another node built, built again here from their stored source archive.
pub struct LocalBuilds {
    pub store: openloop_store::Store,
    pub config: Arc<crate::config::ServerConfig>,
}

impl ports::Builds for LocalBuilds {
    fn local_manifest<'a>(&'a self, dep: &'a Deployment) -> BoxFuture<'a, EngineResult<Manifest>> {
        Box::pin(async move {
            let dest = self.config.deployments_dir().join(&dep.id);
            let marker = dest.with_extension("json");
            if let Ok(text) = tokio::fs::read_to_string(&marker).await {
                if let Ok(m) = serde_json::from_str::<Manifest>(&text) {
                    // Trusted only while what it names is still there (an environment cache
                    // may have been pruned): otherwise built again.
                    if std::path::Path::new(&m.venv)
                        .join(".openloop-ready")
                        .exists()
                        && std::path::Path::new(&m.source_dir).is_dir()
                    {
                        return Ok(m);
                    }
                }
            }
            let mut manifest = openloop_engine::manifest_of(dep)?;
            let hash = dep.source_hash.as_deref().ok_or_else(|| {
                EngineError::Unavailable(format!(
                    "deployment {} was built before this server was part of a cluster and only its first node can run it; deploy the project again",
                    dep.id
                ))
            })?;
            let archive = self.store.deployment_source(hash).await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let id = dep.id.clone();
            let logger = tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    tracing::info!(deployment = %id, "{line}");
                }
            });
            let built = openloop_deploy::build_from_archive(
                &crate::services::deployments::build_settings(&self.config, &dep.id),
                &dep.project_name,
                &archive,
                hash,
                dest,
                &tx,
            )
            .await;
            drop(tx);
            let _ = logger.await;
            let (venv, repo) = built.map_err(|e| {
                EngineError::Unavailable(format!(
                    "building deployment {} on this node failed: {e}",
                    dep.id
                ))
            })?;
            manifest.venv = venv.to_string_lossy().into_owned();
            manifest.source_dir = repo.to_string_lossy().into_owned();
            let text = serde_json::to_string(&manifest)
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            let partial = marker.with_extension("json.partial");
            tokio::fs::write(&partial, text)
                .await
                .and(tokio::fs::rename(&partial, &marker).await)
                .map_err(|e| EngineError::Internal(format!("recording a local build: {e}")))?;
            Ok(manifest)
        })
    }
}

impl ports::Redact for Redactor {
    fn redact_json(&self, v: Value) -> Value {
        Redactor::redact_json(self, v)
    }
    fn redact_string(&self, text: String) -> String {
        Redactor::redact_string(self, text)
    }
}

impl ports::Secrets for Secrets {
    fn resolve<'a>(
        &'a self,
        wanted: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, EngineResult<RunSecrets>> {
        Box::pin(async move {
            let given = Secrets::resolve(self, wanted).await.map_err(port)?;
            Ok(RunSecrets {
                env: given.env,
                redactor: Arc::new(given.redactor),
            })
        })
    }
}

impl ports::NetworkPolicies for NetworkPolicies {
    fn resolve<'a>(&'a self, id_or_name: &'a str) -> BoxFuture<'a, EngineResult<EgressPolicy>> {
        Box::pin(async move {
            NetworkPolicies::resolve(self, id_or_name)
                .await
                .map_err(port)
        })
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(m) => ApiError::NotFound(m),
            EngineError::Validation(m) => ApiError::Validation(m),
            EngineError::Conflict(m) => ApiError::Conflict(m),
            EngineError::CallDepthExceeded {
                target,
                depth,
                limit,
            } => ApiError::CallDepthExceeded {
                target,
                depth,
                limit,
            },
            EngineError::Unavailable(m) => ApiError::Unavailable(m),
            EngineError::Internal(m) => ApiError::Internal(m),
            EngineError::Store(e) => e.into(),
            EngineError::Port(e) => match e.downcast::<ApiError>() {
                Ok(api) => *api,
                Err(other) => ApiError::Internal(other.to_string()),
            },
        }
    }
}
