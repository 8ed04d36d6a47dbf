//! Push-to-deploy: git repositories connected to a project. A push to the connected branch,
//! reported by a signed webhook or seen by polling, deploys exactly the pushed commit.
//!
//! - [`Repositories`]: connect, list, remove, the deliveries, and [`Repositories::receive`],
//!   which takes one webhook delivery.
//! - [`webhook`]: the providers' headers, signatures and push payloads.
//! - [`poll`]: a task per connection with `poll_seconds` that runs `git ls-remote`.
//! - `views`: the request and answer bodies, and the provider and outcome enums.
//!
//! The webhook secret is sealed with the server's secrets key (`webhook:<id>` as associated
//! data, a name no secret can have) and shown only in the answer that created it.

pub mod poll;
mod views;
pub mod webhook;

pub use views::{
    CreateRepository, CreatedRepository, DeliveryList, DeliveryOutcome, DeliveryView, Provider,
    RepositoryList, RepositoryView, WebhookAnswer,
};

use crate::config::ServerConfig;
use crate::error::{ApiError, ApiResult};
use crate::services::deployments::{valid_project_name, CreateDeployment, Deployments};
use crate::services::secrets::Secrets;
use axum::http::{HeaderMap, StatusCode};
use openloop_store::repositories::{
    DeliveryRecord, NewDelivery, NewRepository, RepositoryRecord, DELIVERIES_KEPT,
};
use openloop_store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use webhook::Event;

/// Largest webhook body taken (GitHub caps its payloads at 25 MB, but a push of a few
/// commits is a few KiB; anything past this is refused with 413).
pub const MAX_WEBHOOK_BODY: usize = 1 << 20;
/// Longest `poll_seconds` (a week).
pub const MAX_POLL_SECONDS: u64 = 7 * 24 * 3600;
/// The branch a connection deploys when none is given.
pub const DEFAULT_BRANCH: &str = "main";

/// A branch name git would accept (`git check-ref-format`'s rules, a little stricter).
pub fn valid_branch(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= 200
        && b.bytes()
            .all(|c| c.is_ascii_graphic() && !b"~^:?*[\\".contains(&c))
        && !b.starts_with(['-', '/', '.'])
        && !b.ends_with(['/', '.'])
        && !b.ends_with(".lock")
        && !b.contains("..")
        && !b.contains("//")
        && !b.contains("/.")
        && !b.contains("@{")
        && b != "@"
}

/// A repository URL or path: no control characters, and never anything git could take for
/// an option.
fn check_url(url: &str) -> ApiResult<()> {
    if url.is_empty() || url.len() > 2048 {
        return Err(ApiError::BadRequest(
            "`url` must be a git URL or a repository's path on the server (at most 2048 characters)".into(),
        ));
    }
    if url.starts_with('-') || url.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "`url` may not start with '-' or hold control characters".into(),
        ));
    }
    Ok(())
}

/// Where this server is reached, as the caller reached it: the `Host` header (and
/// `X-Forwarded-Proto` from a proxy), else the listen address.
pub fn base_url(headers: &HeaderMap, listen: std::net::SocketAddr) -> String {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let scheme = match text("x-forwarded-proto").map(str::trim) {
        Some("https") => "https",
        _ => "http",
    };
    let host = text("host").map(str::trim).filter(|h| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b".-:[]_".contains(&c))
    });
    match host {
        Some(h) => format!("{scheme}://{h}"),
        None => {
            let mut addr = listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("{scheme}://{addr}")
        }
    }
}

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

    fn view(rec: &RepositoryRecord, base: &str) -> RepositoryView {
        RepositoryView {
            id: rec.id.clone(),
            name: rec.project_name.clone(),
            url: rec.url.clone(),
            branch: rec.branch.clone(),
            poll_seconds: rec.poll_seconds.map(|s| s.max(0) as u64),
            webhook_url: format!("{base}/v1/repositories/{}/webhook", rec.id),
            last_commit: rec.last_commit.clone(),
            last_deployment_id: rec.last_deployment_id.clone(),
            created_at_ms: rec.created_at_ms,
        }
    }

    /// Connect a repository; `base` is this server's URL as the caller reached it.
    pub async fn create(
        self: &Arc<Self>,
        req: CreateRepository,
        base: &str,
    ) -> ApiResult<CreatedRepository> {
        let url = req.url.trim();
        check_url(url)?;
        if !valid_project_name(&req.name) {
            return Err(ApiError::BadRequest(format!(
                "project name {:?} may only hold letters, digits, '_', '-' and '.'",
                webhook::printable(&req.name, 100)
            )));
        }
        let branch = req.branch.as_deref().unwrap_or(DEFAULT_BRANCH).trim();
        let branch = branch.strip_prefix("refs/heads/").unwrap_or(branch);
        if !valid_branch(branch) {
            return Err(ApiError::BadRequest(format!(
                "branch {:?} is not a valid git branch name",
                webhook::printable(branch, 100)
            )));
        }
        let min = self.config.repo_min_poll_seconds;
        if let Some(s) = req.poll_seconds {
            if !(min..=MAX_POLL_SECONDS).contains(&s) {
                return Err(ApiError::BadRequest(format!(
                    "`poll_seconds` must be between {min} and {MAX_POLL_SECONDS} (omit it for webhooks only)"
                )));
            }
        }
        let id = openloop_store::new_id("repo");
        let secret = openloop_store::keys::new_secret("olwh_");
        let sealed = self.secrets.key().seal(&sealing_name(&id), &secret)?;
        let rec = self
            .store
            .insert_repository(&NewRepository {
                id: &id,
                project_name: &req.name,
                url,
                branch,
                poll_seconds: req.poll_seconds.map(|s| s as i64),
                secret: &sealed,
            })
            .await?;
        tracing::info!(repository = %rec.id, project = %rec.project_name, branch = %rec.branch, poll_seconds = ?rec.poll_seconds, "repository connected");
        self.start_poller(&rec);
        Ok(CreatedRepository {
            repository: Self::view(&rec, base),
            webhook_secret: secret,
        })
    }

    pub async fn list(&self, base: &str) -> ApiResult<RepositoryList> {
        Ok(RepositoryList {
            repositories: self
                .store
                .list_repositories()
                .await?
                .iter()
                .map(|r| Self::view(r, base))
                .collect(),
        })
    }

    pub async fn get(&self, id: &str, base: &str) -> ApiResult<RepositoryView> {
        Ok(Self::view(&self.store.get_repository(id).await?, base))
    }

    /// Remove a connection and its deliveries, and stop its poller; returns what it was.
    pub async fn delete(&self, id: &str, base: &str) -> ApiResult<RepositoryView> {
        let rec = self.store.delete_repository(id).await?;
        self.stop_poller(id);
        tracing::info!(repository = %id, "repository disconnected");
        Ok(Self::view(&rec, base))
    }

    /// A repository's deliveries, newest first (at most `limit`, at most 100).
    pub async fn deliveries(&self, id: &str, limit: Option<i64>) -> ApiResult<DeliveryList> {
        self.store.get_repository(id).await?;
        let limit = limit.unwrap_or(DELIVERIES_KEPT).clamp(1, DELIVERIES_KEPT);
        Ok(DeliveryList {
            deliveries: self
                .store
                .list_deliveries(id, limit)
                .await?
                .into_iter()
                .map(DeliveryView::of)
                .collect::<ApiResult<_>>()?,
        })
    }

    /// Record a delivery.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        repo: &RepositoryRecord,
        provider: Provider,
        event: Option<&str>,
        git_ref: Option<&str>,
        commit: Option<&str>,
        outcome: DeliveryOutcome,
        message: &str,
        deployment_id: Option<&str>,
    ) -> ApiResult<DeliveryRecord> {
        Ok(self
            .store
            .insert_delivery(&NewDelivery {
                repository_id: &repo.id,
                provider: provider.as_str(),
                event,
                git_ref,
                commit_sha: commit,
                outcome: outcome.as_str(),
                message,
                deployment_id,
            })
            .await?)
    }

    /// Record a delivery that is refused (`Rejected`) or cannot be handled (`Failed`), and
    /// give back its error. A failure to record is logged; the error stands.
    async fn refuse(
        &self,
        repo: &RepositoryRecord,
        envelope: &webhook::Envelope,
        outcome: DeliveryOutcome,
        error: ApiError,
    ) -> ApiError {
        let message = error.to_string();
        if let Err(e) = self
            .record(
                repo,
                envelope.provider,
                envelope.event.as_deref(),
                None,
                None,
                outcome,
                &message,
                None,
            )
            .await
        {
            tracing::error!(repository = %repo.id, error = %e, "could not record a refused delivery");
        }
        error
    }

    /// Deploy `commit` of `git_ref` for a connection and record the delivery.
    async fn deploy(
        &self,
        repo: &RepositoryRecord,
        provider: Provider,
        event: Option<&str>,
        git_ref: &str,
        commit: &str,
    ) -> ApiResult<DeliveryRecord> {
        let created = self
            .deployments
            .create(CreateDeployment {
                source: repo.url.clone(),
                git_ref: Some(commit.to_string()),
                name: Some(repo.project_name.clone()),
            })
            .await;
        let dep = match created {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(repository = %repo.id, commit, error = %e, "push-to-deploy could not create the deployment");
                let message = format!("the deployment could not be created: {e}");
                if let Err(e) = self
                    .record(
                        repo,
                        provider,
                        event,
                        Some(git_ref),
                        Some(commit),
                        DeliveryOutcome::Failed,
                        &message,
                        None,
                    )
                    .await
                {
                    tracing::error!(repository = %repo.id, error = %e, "could not record a failed delivery");
                }
                return Err(e);
            }
        };
        self.store
            .set_repository_deployment(&repo.id, commit, &dep.id)
            .await?;
        tracing::info!(repository = %repo.id, provider = provider.as_str(), commit, deployment = %dep.id, "push-to-deploy: deploying");
        let message = format!(
            "deploying commit {} of {git_ref} to project {} as deployment {}",
            &commit[..12.min(commit.len())],
            repo.project_name,
            dep.id
        );
        self.record(
            repo,
            provider,
            event,
            Some(git_ref),
            Some(commit),
            DeliveryOutcome::Deployed,
            &message,
            Some(&dep.id),
        )
        .await
    }

    /// Take one webhook delivery for repository `id`: 202 when it deploys, 200 when it is
    /// authentic but has nothing to deploy; 401, 400 or 413 when it is refused. Every
    /// delivery to an existing repository is recorded.
    pub async fn receive(
        &self,
        id: &str,
        headers: &HeaderMap,
        body: axum::body::Body,
    ) -> ApiResult<(StatusCode, WebhookAnswer)> {
        let repo = self.store.get_repository(id).await?;
        let envelope = webhook::envelope(headers);
        let body = match axum::body::to_bytes(body, MAX_WEBHOOK_BODY).await {
            Ok(b) => b,
            Err(e) => {
                let error = if e.to_string().contains("length limit") {
                    ApiError::PayloadTooLarge(format!(
                        "the delivery's body is over {} KiB",
                        MAX_WEBHOOK_BODY >> 10
                    ))
                } else {
                    ApiError::BadRequest("the delivery's body could not be read".into())
                };
                return Err(self
                    .refuse(&repo, &envelope, DeliveryOutcome::Rejected, error)
                    .await);
            }
        };
        let opened = self
            .secrets
            .key()
            .open_sealed(&sealing_name(&repo.id), &repo.sealed_secret());
        let secret = match opened {
            Ok(s) => s,
            Err(e) => {
                return Err(self
                    .refuse(&repo, &envelope, DeliveryOutcome::Failed, e)
                    .await)
            }
        };
        if let Err(why) = webhook::verify(&envelope, &secret, &body) {
            return Err(self
                .refuse(
                    &repo,
                    &envelope,
                    DeliveryOutcome::Rejected,
                    ApiError::Unauthorized(why),
                )
                .await);
        }
        let content_type = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let event = match webhook::parse(&envelope, content_type, &body) {
            Ok(e) => e,
            Err(why) => {
                return Err(self
                    .refuse(
                        &repo,
                        &envelope,
                        DeliveryOutcome::Rejected,
                        ApiError::BadRequest(why),
                    )
                    .await)
            }
        };
        let wanted = format!("refs/heads/{}", repo.branch);
        let (git_ref, commit, ignored) = match &event {
            Event::Ping => (
                None,
                None,
                "ping: the webhook reaches Openloop and its signature is right".to_string(),
            ),
            Event::Other(name) => (
                None,
                None,
                format!(
                    "{:?} events deploy nothing; only pushes to {wanted} do",
                    name
                ),
            ),
            Event::Push {
                git_ref,
                commit: None,
            } => (
                Some(git_ref.as_str()),
                None,
                format!("{git_ref} was deleted; nothing to deploy"),
            ),
            Event::Push {
                git_ref,
                commit: Some(c),
            } if *git_ref != wanted => (
                Some(git_ref.as_str()),
                Some(c.as_str()),
                format!("a push to {git_ref}; this repository deploys {wanted}"),
            ),
            Event::Push {
                git_ref,
                commit: Some(c),
            } => {
                let rec = self
                    .deploy(
                        &repo,
                        envelope.provider,
                        envelope.event.as_deref(),
                        git_ref,
                        c,
                    )
                    .await?;
                return Ok((
                    StatusCode::ACCEPTED,
                    WebhookAnswer {
                        delivery_id: rec.id,
                        outcome: DeliveryOutcome::Deployed,
                        message: rec.message,
                        deployment_id: rec.deployment_id,
                    },
                ));
            }
        };
        let rec = self
            .record(
                &repo,
                envelope.provider,
                envelope.event.as_deref(),
                git_ref,
                commit,
                DeliveryOutcome::Ignored,
                &ignored,
                None,
            )
            .await?;
        Ok((
            StatusCode::OK,
            WebhookAnswer {
                delivery_id: rec.id,
                outcome: DeliveryOutcome::Ignored,
                message: ignored,
                deployment_id: None,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn branches() {
        for ok in ["main", "release/1.2", "feature-x", "v2_fix", "a.b"] {
            assert!(valid_branch(ok), "{ok}");
        }
        for bad in [
            "", "-x", "/a", "a/", ".a", "a.", "a..b", "a//b", "a/.b", "x.lock", "a b", "a~1", "a^",
            "a:b", "a?", "a*", "a[", "a\\b", "@", "a@{1}", "a\nb",
        ] {
            assert!(!valid_branch(bad), "{bad:?}");
        }
    }

    #[test]
    fn urls() {
        assert!(check_url("https://github.com/o/r.git").is_ok());
        assert!(check_url("/srv/git/r.git").is_ok());
        assert!(check_url("git@github.com:o/r.git").is_ok());
        assert!(check_url("--upload-pack=touch /tmp/x").is_err());
        assert!(check_url("a\nb").is_err());
        assert!(check_url("").is_err());
        assert!(check_url(&"a".repeat(3000)).is_err());
    }

    #[test]
    fn base_urls() {
        let listen: std::net::SocketAddr = "127.0.0.1:8700".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(base_url(&h, listen), "http://127.0.0.1:8700");
        assert_eq!(
            base_url(&h, "0.0.0.0:9000".parse().unwrap()),
            "http://127.0.0.1:9000"
        );
        h.insert("host", HeaderValue::from_static("deploy.example.com:8443"));
        assert_eq!(base_url(&h, listen), "http://deploy.example.com:8443");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(base_url(&h, listen), "https://deploy.example.com:8443");
        h.insert("host", HeaderValue::from_static("[::1]:8700"));
        assert_eq!(base_url(&h, listen), "https://[::1]:8700");
        // A Host that is not a host falls back to the listen address.
        h.insert("host", HeaderValue::from_static("evil.com/x?y"));
        assert_eq!(base_url(&h, listen), "https://127.0.0.1:8700");
    }
}
