//! Shared state handed to every handler.

use crate::auth::Tokens;
use crate::config::ServerConfig;
use crate::notify::Notifier;
use crate::services::network_policies::NetworkPolicies;
use crate::services::repositories::Repositories;
use crate::services::secrets::Secrets;
use crate::services::{deployments::Deployments, devboxes::Devboxes, invocations::Invocations};
use openloop_store::Store;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServerConfig>,
    pub store: Store,
    pub notifier: Notifier,
    pub tokens: Tokens,
    pub devboxes: Arc<Devboxes>,
    pub invocations: Arc<Invocations>,
    pub deployments: Arc<Deployments>,
    pub secrets: Arc<Secrets>,
    pub network_policies: Arc<NetworkPolicies>,
    pub repositories: Arc<Repositories>,
}
