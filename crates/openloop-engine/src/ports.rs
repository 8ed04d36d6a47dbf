//! What the engine needs from the rest of the server, and nothing more: each a narrow trait
//! that `openloop-api` implements with its services. The engine holds them as
//! [`Collaborators`].

use crate::EngineResult;
use openloop_deploy::Manifest;
use openloop_sandbox::egress::EgressPolicy;
use openloop_store::deployments::Deployment;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future, as trait methods here return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Tokens a run's code authenticates to the API with, scoped to its invocation.
pub trait RunTokens: Send + Sync {
    /// A fresh token for `invocation_id`, valid until revoked.
    fn issue(&self, invocation_id: &str) -> String;
    fn revoke(&self, token: &str);
}

/// The devboxes a run created: shut down when the run ends or is canceled.
pub trait RunDevboxes: Send + Sync {
    fn shutdown_for_invocation<'a>(
        &'a self,
        invocation_id: &'a str,
    ) -> BoxFuture<'a, EngineResult<()>>;

    /// Every devbox on this node, when the node lost its lease (another node has marked
    /// them failed already).
    fn shutdown_all_local(&self) -> BoxFuture<'_, ()>;
}

/// Deployments another node of the cluster built, built again on this one.
pub trait Builds: Send + Sync {
    /// `dep`'s manifest with the paths of this node's own build of it (its source unpacked
    /// from the stored archive, its environment built or reused), built now if needed.
    fn local_manifest<'a>(&'a self, dep: &'a Deployment) -> BoxFuture<'a, EngineResult<Manifest>>;
}

/// Hides secret values in what a run produces (its result, error and logs).
pub trait Redact: Send + Sync {
    fn redact_json(&self, v: Value) -> Value;
    fn redact_string(&self, text: String) -> String;
}

/// A deployment's secrets for one run: its environment, and how to hide their values.
pub struct RunSecrets {
    pub env: BTreeMap<String, String>,
    pub redactor: Arc<dyn Redact>,
}

/// The secrets a deployment's manifest names (`ENV_VAR → secret name`), read for each run so
/// that an update applies from the next run on.
pub trait Secrets: Send + Sync {
    fn resolve<'a>(
        &'a self,
        wanted: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, EngineResult<RunSecrets>>;
}

/// A deployment's network policy (by id or name), as egress rules for its warm process.
pub trait NetworkPolicies: Send + Sync {
    fn resolve<'a>(&'a self, id_or_name: &'a str) -> BoxFuture<'a, EngineResult<EgressPolicy>>;
}

/// Everything the engine reaches outside itself.
#[derive(Clone)]
pub struct Collaborators {
    pub tokens: Arc<dyn RunTokens>,
    pub devboxes: Arc<dyn RunDevboxes>,
    pub secrets: Arc<dyn Secrets>,
    pub network_policies: Arc<dyn NetworkPolicies>,
    pub builds: Arc<dyn Builds>,
}
