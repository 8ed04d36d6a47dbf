//! `/v1/devboxes`: Runloop's devbox API.
//!
//! Executions are in [`executions`], files in [`files`], suspend and resume in [`suspend`],
//! disk snapshots in [`snapshots`], tunnels, usage and standard input in [`tunnels`].

mod executions;
mod files;
mod snapshots;
mod suspend;
mod tunnels;

pub use executions::*;
pub use files::*;
pub use snapshots::*;
pub use suspend::*;
pub use tunnels::*;

use super::page_limit;
use crate::auth::Principal;
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::model::{
    DevboxList, DevboxStatus, DevboxView, Empty, ExecutionResult, ExecutionStatus, ExecutionView,
    SseEvent, UploadForm,
};
use crate::numbers::{self, Number};
use crate::services::devboxes::executions::{Execution, Stream};
use crate::services::devboxes::CreateDevbox;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Multipart, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// Largest file `read_file_contents` returns as text.
const MAX_READ: usize = 64 << 20;
/// Longest a long-poll (`wait_for_status`, `execute`) holds a request.
const MAX_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_WAIT: Duration = Duration::from_secs(25);

fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

/// Create a devbox; it answers once the devbox runs (or has failed).
#[utoipa::path(
    post,
    path = "/v1/devboxes",
    tag = "devboxes",
    request_body(content = Option<CreateDevbox>, description = "An empty body is all defaults"),
    responses((status = 200, description = "The devbox, `running` (or `failure`)", body = DevboxView)),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> ApiResult<Json<DevboxView>> {
    // An empty body means "all defaults", as Runloop's client sends for `create()`.
    let req: CreateDevbox = parse_body(&body)?;
    Ok(Json(state.devboxes.create(req, &principal).await?))
}

/// Create a devbox and answer once it runs (the same as `POST /v1/devboxes`).
#[utoipa::path(
    post,
    path = "/v1/devboxes/create_and_await_running",
    tag = "devboxes",
    request_body(content = Option<CreateDevbox>, description = "An empty body is all defaults"),
    responses((status = 200, description = "The devbox, `running` (or `failure`)", body = DevboxView)),
)]
pub async fn create_and_await_running(
    state: State<AppState>,
    principal: Extension<Principal>,
    body: Bytes,
) -> ApiResult<Json<DevboxView>> {
    create(state, principal, body).await
}

/// A devbox.
#[utoipa::path(
    get,
    path = "/v1/devboxes/{id}",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    responses((status = 200, description = "The devbox", body = DevboxView)),
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DevboxView>> {
    let rec = state.devboxes.authorized(&id, &principal).await?;
    Ok(Json(state.devboxes.view_of(&rec).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only devboxes with this status.
    status: Option<DevboxStatus>,
    /// The last id of the previous page.
    starting_after: Option<String>,
    /// Page size (default 50; 1 to 1000 is used); a whole number (`10.0` is 10).
    #[param(value_type = Option<f64>, minimum = 0, maximum = 1e9, multiple_of = 1)]
    limit: Option<Number>,
}

/// List devboxes, newest first.
#[utoipa::path(
    get,
    path = "/v1/devboxes",
    tag = "devboxes",
    params(ListQuery),
    responses((status = 200, description = "A page of devboxes", body = DevboxList)),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<DevboxList>> {
    principal.require_key()?;
    let limit = numbers::whole("limit", q.limit.as_ref(), 0..=1_000_000_000)?;
    let limit = page_limit(limit.map(|n| n as i64));
    let mut items = state
        .store
        .list_devboxes(
            q.status.map(DevboxStatus::as_str),
            q.starting_after.as_deref(),
            limit + 1,
        )
        .await?;
    let has_more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let mut views = Vec::with_capacity(items.len());
    for rec in &items {
        views.push(state.devboxes.view_of(rec).await?);
    }
    Ok(Json(DevboxList {
        devboxes: views,
        has_more,
        remaining_count: if has_more { 1 } else { 0 },
    }))
}

/// Wait until the devbox has one of `statuses`.
#[derive(Deserialize, Default, ToSchema)]
pub struct DevboxWaitBody {
    /// At least one status.
    #[serde(default)]
    #[schema(min_items = 1, required = true)]
    statuses: Vec<DevboxStatus>,
    /// Seconds to wait, fractions allowed (default 25, at most 60 is used); then 408.
    #[serde(default)]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1e9)]
    timeout_seconds: Option<Number>,
}

/// Wait until the execution has one of `statuses`.
#[derive(Deserialize, Default, ToSchema)]
pub struct ExecutionWaitBody {
    /// At least one status.
    #[serde(default)]
    #[schema(min_items = 1, required = true)]
    statuses: Vec<ExecutionStatus>,
    /// Seconds to wait, fractions allowed (default 25, at most 60 is used); then 408.
    #[serde(default)]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1e9)]
    timeout_seconds: Option<Number>,
}

/// How long a long-poll holds the request: `field` (seconds) or the default, at most [`MAX_WAIT`].
fn wait_time(field: &str, seconds: Option<&Number>) -> ApiResult<Duration> {
    Ok(numbers::seconds(field, seconds)?
        .unwrap_or(DEFAULT_WAIT)
        .min(MAX_WAIT))
}

fn timed_out(what: &str) -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        Json(ErrorBody::new(
            "timeout",
            format!("{what} did not reach the requested status in time; ask again"),
        )),
    )
        .into_response()
}

/// Wait (up to `timeout_seconds`) for a devbox status; 408 otherwise.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/wait_for_status",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body = DevboxWaitBody,
    responses(
        (status = 200, description = "The devbox, in one of the statuses", body = DevboxView),
        (status = 408, description = "Not reached in time; ask again", body = ErrorBody),
    ),
)]
pub async fn wait_for_status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: DevboxWaitBody = parse_body(&body)?;
    if req.statuses.is_empty() {
        return Err(ApiError::BadRequest(
            "`statuses` must name at least one status".into(),
        ));
    }
    let wait = wait_time("timeout_seconds", req.timeout_seconds.as_ref())?;
    state.devboxes.authorized(&id, &principal).await?;
    match state
        .devboxes
        .wait_for_status(&id, &req.statuses, wait)
        .await?
    {
        Some(view) => Ok(Json(view).into_response()),
        None => Ok(timed_out(&format!("devbox {id}"))),
    }
}

/// Reset the devbox's idle timer.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/keep_alive",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    responses((status = 200, description = "The timer is reset", body = Empty)),
)]
pub async fn keep_alive(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Empty>> {
    state.devboxes.keep_alive(&id, &principal).await?;
    Ok(Json(Empty {}))
}

/// Shut a devbox down.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/shutdown",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    responses((status = 200, description = "The devbox, `shutdown`", body = DevboxView)),
)]
pub async fn shutdown(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DevboxView>> {
    state.devboxes.authorized(&id, &principal).await?;
    state
        .devboxes
        .shutdown(&id, "api_shutdown", "shut down on request")
        .await?;
    Ok(Json(state.devboxes.view(&id).await?))
}
