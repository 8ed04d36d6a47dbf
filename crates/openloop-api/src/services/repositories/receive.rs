//! Taking one webhook delivery: its body read within a limit, its signature checked with
//! the connection's secret, and its event deployed, ignored or refused, and recorded.

use super::webhook::{self, Event};
use super::{sealing_name, DeliveryOutcome, Repositories, WebhookAnswer};
use crate::error::{ApiError, ApiResult};
use axum::http::{HeaderMap, StatusCode};

/// Largest webhook body taken (GitHub caps its payloads at 25 MB, but a push of a few
/// commits is a few KiB; anything past this is refused with 413).
pub const MAX_WEBHOOK_BODY: usize = 1 << 20;

impl Repositories {
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
