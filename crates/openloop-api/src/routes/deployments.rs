//! `/v1/deployments`: build a repository into a project's new deployment.

use super::page_limit;
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::model::{DeploymentList, DeploymentLogs, DeploymentStatus, DeploymentView, SseEvent};
use crate::services::deployments::CreateDeployment;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use utoipa::IntoParams;

/// Deploy a repository: the build runs in the background (follow its log).
#[utoipa::path(
    post,
    path = "/v1/deployments",
    tag = "deployments",
    request_body = CreateDeployment,
    responses((status = 201, description = "The deployment, `queued`", body = DeploymentView)),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<CreateDeployment>,
) -> ApiResult<(StatusCode, Json<DeploymentView>)> {
    principal.require_key()?;
    let dep = state.deployments.create(body).await?;
    Ok((StatusCode::CREATED, Json(DeploymentView::of(&dep)?)))
}

/// A deployment's status.
#[utoipa::path(
    get,
    path = "/v1/deployments/{id}",
    tag = "deployments",
    params(("id" = String, Path, description = "The deployment's id")),
    responses((status = 200, description = "The deployment", body = DeploymentView)),
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DeploymentView>> {
    principal.require_key()?;
    Ok(Json(DeploymentView::of(
        &state.store.get_deployment(&id).await?,
    )?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only deployments of this project.
    project: Option<String>,
    /// Page size (default 50, at most 1000).
    limit: Option<i64>,
}

/// List deployments, newest first.
#[utoipa::path(
    get,
    path = "/v1/deployments",
    tag = "deployments",
    params(ListQuery),
    responses((status = 200, description = "Deployments", body = DeploymentList)),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<DeploymentList>> {
    principal.require_key()?;
    let items = state
        .store
        .list_deployments(q.project.as_deref(), page_limit(q.limit))
        .await?;
    Ok(Json(DeploymentList {
        deployments: items
            .iter()
            .map(DeploymentView::of)
            .collect::<ApiResult<_>>()?,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only lines after this sequence number (default 0: from the start).
    after_seq: Option<i64>,
}

/// A deployment's build log (up to 10,000 lines after `after_seq`).
#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/logs",
    tag = "deployments",
    params(("id" = String, Path, description = "The deployment's id"), LogsQuery),
    responses((status = 200, description = "Build-log lines", body = DeploymentLogs)),
)]
pub async fn logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Json<DeploymentLogs>> {
    principal.require_key()?;
    let d = state.store.get_deployment(&id).await?;
    let lines = state
        .store
        .deployment_logs(&id, q.after_seq.unwrap_or(0), 10_000)
        .await?;
    Ok(Json(DeploymentLogs {
        deployment_id: id,
        status: DeploymentStatus::parse(&d.status)?,
        failure_reason: d.failure_reason,
        logs: lines,
    }))
}

/// A deployment's build log as Server-Sent Events.
///
/// `log` events (one build-log line each), then `end` with the `DeploymentView`.
#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/logs/stream",
    tag = "deployments",
    params(("id" = String, Path, description = "The deployment's id")),
    responses((status = 200, description = "Server-Sent Events: `log`, then `end`", body = SseEvent, content_type = "text/event-stream")),
)]
pub async fn stream_logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    principal.require_key()?;
    state.store.get_deployment(&id).await?;
    let stream = crate::streams::deployment_logs(state, id, 0);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
