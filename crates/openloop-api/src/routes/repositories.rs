//! `/v1/repositories`: push-to-deploy. Connecting, listing and removing repositories need an
//! API key; the webhook is authenticated by its signature instead (the forge has no key).

use crate::auth::Principal;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::services::repositories::{
    base_url, CreateRepository, CreatedRepository, DeliveryList, RepositoryList, RepositoryView,
    WebhookAnswer,
};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::IntoParams;

/// Connect a git repository to a project: pushes to its branch deploy.
///
/// The answer holds the webhook's URL and secret; the secret is shown only here.
#[utoipa::path(
    post,
    path = "/v1/repositories",
    tag = "repositories",
    request_body = CreateRepository,
    responses((status = 201, description = "The connection, with its webhook secret (shown once)", body = CreatedRepository)),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateRepository>,
) -> ApiResult<(StatusCode, Json<CreatedRepository>)> {
    principal.require_key()?;
    let base = base_url(&headers, state.config.listen);
    let created = state.repositories.create(body, &base).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// List connected repositories, newest first (never their secrets).
#[utoipa::path(
    get,
    path = "/v1/repositories",
    tag = "repositories",
    responses((status = 200, description = "The connections", body = RepositoryList)),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> ApiResult<Json<RepositoryList>> {
    principal.require_key()?;
    let base = base_url(&headers, state.config.listen);
    Ok(Json(state.repositories.list(&base).await?))
}

/// A connected repository (never its secret).
#[utoipa::path(
    get,
    path = "/v1/repositories/{id}",
    tag = "repositories",
    params(("id" = String, Path, description = "The connection's id")),
    responses((status = 200, description = "The connection", body = RepositoryView)),
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RepositoryView>> {
    principal.require_key()?;
    let base = base_url(&headers, state.config.listen);
    Ok(Json(state.repositories.get(&id, &base).await?))
}

/// Remove a connection: its webhook answers 404 and its polling stops. Deployments it
/// made stay.
#[utoipa::path(
    delete,
    path = "/v1/repositories/{id}",
    tag = "repositories",
    params(("id" = String, Path, description = "The connection's id")),
    responses((status = 200, description = "What was removed", body = RepositoryView)),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RepositoryView>> {
    principal.require_key()?;
    let base = base_url(&headers, state.config.listen);
    Ok(Json(state.repositories.delete(&id, &base).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// At most this many (default and most: 100, all that are kept).
    limit: Option<i64>,
}

/// A connection's last deliveries (webhooks, and polls that deployed), newest first.
#[utoipa::path(
    get,
    path = "/v1/repositories/{id}/deliveries",
    tag = "repositories",
    params(("id" = String, Path, description = "The connection's id"), DeliveriesQuery),
    responses((status = 200, description = "Deliveries, newest first", body = DeliveryList)),
)]
pub async fn deliveries(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<DeliveryList>> {
    principal.require_key()?;
    Ok(Json(state.repositories.deliveries(&id, q.limit).await?))
}

/// The headers a forge sends with a delivery (one provider's set).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Documents the headers; the handler reads them from the `HeaderMap`.
pub struct WebhookHeaders {
    /// GitHub's event: `push` deploys, `ping` is answered.
    #[serde(rename = "X-GitHub-Event")]
    github_event: Option<String>,
    /// GitHub: `sha256=` and the hex HMAC-SHA256 of the body keyed with the webhook secret.
    #[serde(rename = "X-Hub-Signature-256")]
    github_signature: Option<String>,
    /// Gitea's event (`push`).
    #[serde(rename = "X-Gitea-Event")]
    gitea_event: Option<String>,
    /// Gitea: the hex HMAC-SHA256 of the body.
    #[serde(rename = "X-Gitea-Signature")]
    gitea_signature: Option<String>,
    /// Forgejo's event (`push`).
    #[serde(rename = "X-Forgejo-Event")]
    forgejo_event: Option<String>,
    /// Forgejo: the hex HMAC-SHA256 of the body.
    #[serde(rename = "X-Forgejo-Signature")]
    forgejo_signature: Option<String>,
    /// GitLab's event (`Push Hook`).
    #[serde(rename = "X-Gitlab-Event")]
    gitlab_event: Option<String>,
    /// GitLab: the webhook secret itself.
    #[serde(rename = "X-Gitlab-Token")]
    gitlab_token: Option<String>,
}

/// Receive a push from GitHub, Gitea, Forgejo or GitLab.
///
/// No API key: the delivery is authenticated by its signature (or GitLab's token) made with
/// the connection's webhook secret. A push to the connected branch deploys exactly the
/// pushed commit (202); pings, other branches, deleted branches and other events are
/// recorded and ignored (200). Bodies are limited to 1 MiB. Every delivery is recorded.
#[utoipa::path(
    post,
    path = "/v1/repositories/{id}/webhook",
    tag = "repositories",
    security(()),
    params(("id" = String, Path, description = "The connection's id"), WebhookHeaders),
    request_body(content = Object, description = "The provider's push payload (`ref`, `after`; GitLab also `checkout_sha`), as JSON or GitHub's form encoding (`payload=`)", content_type = "application/json"),
    responses(
        (status = 202, description = "A push to the connected branch: its commit is being deployed", body = WebhookAnswer),
        (status = 200, description = "Authentic, nothing to deploy (recorded as `ignored`)", body = WebhookAnswer),
        (status = 400, description = "An authentic delivery whose payload is malformed", body = ErrorBody),
        (status = 401, description = "The signature (or token) is missing or wrong; nothing is deployed", body = ErrorBody),
        (status = 404, description = "No such connection", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB", body = ErrorBody),
    ),
)]
pub async fn webhook(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<WebhookAnswer>)> {
    let (status, answer) = state.repositories.receive(&id, &headers, body).await?;
    Ok((status, Json(answer)))
}
