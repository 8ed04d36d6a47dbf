//! The API's bodies for repositories and deliveries, and the enums stored as text.

use crate::error::ApiResult;
use openloop_store::repositories::DeliveryRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

crate::model::status_enum! {
    /// Who reported a push.
    Provider {
        /// GitHub (`X-GitHub-Event`, `X-Hub-Signature-256`).
        Github => "github",
        /// Gitea (`X-Gitea-Event`, `X-Gitea-Signature`).
        Gitea => "gitea",
        /// Forgejo (`X-Forgejo-Event`, `X-Forgejo-Signature`).
        Forgejo => "forgejo",
        /// GitLab (`X-Gitlab-Event`, `X-Gitlab-Token`).
        Gitlab => "gitlab",
        /// The server's own polling (`poll_seconds`).
        Poll => "poll",
        /// A request with none of the providers' headers.
        Unknown => "unknown",
    }
}

crate::model::status_enum! {
    /// What came of a delivery.
    DeliveryOutcome {
        /// A push to the connected branch: its commit is being deployed.
        Deployed => "deployed",
        /// Authentic, but nothing to deploy (a ping, another branch, a deleted branch, another event).
        Ignored => "ignored",
        /// Refused: a bad or missing signature, a body too large, a malformed payload.
        Rejected => "rejected",
        /// The deployment could not be created.
        Failed => "failed",
    }
}

/// Connect a repository.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateRepository {
    /// A git URL (`https://`, `ssh://`, `git@host:path`, `file://`) or a repository's path on
    /// the server.
    pub url: String,
    /// The project its pushes deploy to (letters, digits, `_`, `-`, `.`).
    pub name: String,
    /// The branch whose pushes deploy (default `main`).
    #[serde(default)]
    pub branch: Option<String>,
    /// Also poll the branch's head every this many seconds (`git ls-remote`), for hosts that
    /// cannot reach this server. Omit for webhooks only.
    #[serde(default)]
    pub poll_seconds: Option<u64>,
}

/// A connected repository. Never holds its webhook secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RepositoryView {
    pub id: String,
    /// The project its pushes deploy to.
    pub name: String,
    pub url: String,
    pub branch: String,
    /// The polling interval, when the repository is polled.
    pub poll_seconds: Option<u64>,
    /// Where the forge sends push events (no API key needed: deliveries are signed).
    pub webhook_url: String,
    /// The last commit this connection deployed, and that deployment.
    pub last_commit: Option<String>,
    pub last_deployment_id: Option<String>,
    pub created_at_ms: i64,
}

/// A new connection: `webhook_secret` is shown this once and never again. (No `Debug`: it
/// holds the secret.)
#[derive(Serialize, ToSchema)]
pub struct CreatedRepository {
    #[serde(flatten)]
    pub repository: RepositoryView,
    /// The webhook's secret (GitHub, Gitea, Forgejo: the HMAC key; GitLab: the token).
    pub webhook_secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RepositoryList {
    /// Newest first.
    pub repositories: Vec<RepositoryView>,
}

/// One webhook delivery, or one poll that deployed.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub received_at_ms: i64,
    pub provider: Provider,
    /// The event's name as the provider sent it (`push`, `ping`, `Push Hook`, …).
    pub event: Option<String>,
    /// The ref the push updated (`refs/heads/main`).
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The commit it pointed the ref at.
    pub commit: Option<String>,
    pub outcome: DeliveryOutcome,
    pub message: String,
    /// The deployment it created.
    pub deployment_id: Option<String>,
}

impl DeliveryView {
    pub(super) fn of(d: DeliveryRecord) -> ApiResult<Self> {
        Ok(DeliveryView {
            provider: Provider::parse(&d.provider)?,
            outcome: DeliveryOutcome::parse(&d.outcome)?,
            id: d.id,
            received_at_ms: d.received_at_ms,
            event: d.event,
            git_ref: d.git_ref,
            commit: d.commit_sha,
            message: d.message,
            deployment_id: d.deployment_id,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first; the last 100 are kept.
    pub deliveries: Vec<DeliveryView>,
}

/// The answer to an accepted webhook delivery (refusals are error bodies).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAnswer {
    /// The delivery's record (see `GET /v1/repositories/{id}/deliveries`).
    pub delivery_id: String,
    pub outcome: DeliveryOutcome,
    pub message: String,
    /// The deployment the push started (202 only).
    pub deployment_id: Option<String>,
}
