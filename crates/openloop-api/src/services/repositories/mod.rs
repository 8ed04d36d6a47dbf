//! Push-to-deploy: git repositories connected to a project. A push to the connected branch,
//! reported by a signed webhook or seen by polling, deploys exactly the pushed commit.
//!
//! - here: the [`Repositories`] service;
//! - `connections`: connect, list, show and remove repositories (the checks of a
//!   connection's URL, branch and poll interval), and [`base_url`] for their webhook URLs;
//! - `deliveries`: recording a connection's deliveries, and listing them;
//! - `receive`: [`Repositories::receive`], which takes one webhook delivery;
//! - `deploy`: deploying a pushed commit (from a webhook or a poll), recorded as a delivery;
//! - [`webhook`]: the providers' headers, signatures and push payloads.
//! - [`poll`]: a task per connection with `poll_seconds` that runs `git ls-remote`.
//! - `views`: the request and answer bodies, and the provider and outcome enums.
//!
//! The webhook secret is sealed with the server's secrets key (`webhook:<id>` as associated
//! data, a name no secret can have) and shown only in the answer that created it.

mod connections;
mod deliveries;
mod deploy;
pub mod poll;
mod receive;
mod views;
pub mod webhook;

pub use connections::{base_url, valid_branch, DEFAULT_BRANCH, MAX_POLL_SECONDS};
pub use receive::MAX_WEBHOOK_BODY;
pub use views::{
    CreateRepository, CreatedRepository, DeliveryList, DeliveryOutcome, DeliveryView, Provider,
    RepositoryList, RepositoryView, WebhookAnswer,
};

use crate::config::ServerConfig;
use crate::services::deployments::Deployments;
use crate::services::secrets::Secrets;
use openloop_store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct Repositories {
    store: Store,
    config: Arc<ServerConfig>,
    deployments: Arc<Deployments>,
    secrets: Arc<Secrets>,
    /// The running pollers by repository id; dropping one stops it.
    pollers: Mutex<HashMap<String, poll::Poller>>,
}

/// The associated data a connection's webhook secret is sealed under.
fn sealing_name(id: &str) -> String {
    format!("webhook:{id}")
}

impl Repositories {
    pub fn new(
        store: Store,
        config: Arc<ServerConfig>,
        deployments: Arc<Deployments>,
        secrets: Arc<Secrets>,
    ) -> Self {
        Repositories {
            store,
            config,
            deployments,
            secrets,
            pollers: Mutex::default(),
        }
    }
}
