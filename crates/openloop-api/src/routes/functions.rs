//! `/v1/functions/...`: invoking functions and reading invocations.

use super::page_limit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::model::{
    FunctionInfo, FunctionList, InvocationList, InvocationLogs, InvocationStatus, InvocationView,
    SseEvent,
};
use crate::services::invocations::{manifest_of, EngineError, Reply};
use crate::state::AppState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures::Stream;
use openloop_store::invocations::{Invocation, InvocationFilter};
use serde::Deserialize;
use serde_json::Value;
use std::convert::Infallible;
use utoipa::{IntoParams, ToSchema};

/// The body of `invoke_sync` and `invoke_async`.
#[derive(Deserialize, ToSchema)]
pub struct InvokeBody {
    /// The function's parameters by name (checked against its request schema).
    #[schema(value_type = Object, required = true)]
    request: Option<Value>,
}

/// The JSON view of an invocation, as every endpoint returns it.
pub fn invocation_view(inv: &Invocation) -> ApiResult<InvocationView> {
    InvocationView::of(inv)
}

async fn submit(
    state: &AppState,
    principal: &Principal,
    project: &str,
    function: &str,
    body: InvokeBody,
    reply: Reply,
) -> ApiResult<Invocation> {
    // A run may invoke other functions through its coordinator; the new run records its parent.
    let parent = principal.invocation_id().map(str::to_string);
    let request = body.request.ok_or_else(|| {
        ApiError::Validation(
            "the body must be {\"request\": {...}} with the function's parameters".into(),
        )
    })?;
    state
        .invocations
        .submit(project, function, request, parent, reply)
        .await
        .map_err(ApiError::from)
}

/// Run a function and answer with the finished invocation.
///
/// The run belongs to the server, not to this request: a caller that disconnects does not
/// stop it. A request the function's schema rejects is a 400 naming the field; nothing runs.
#[utoipa::path(
    post,
    path = "/v1/functions/{project}/{function}/invoke_sync",
    tag = "functions",
    params(
        ("project" = String, Path, description = "The project (deployment name)"),
        ("function" = String, Path, description = "The function's name"),
    ),
    request_body = InvokeBody,
    responses((status = 200, description = "The finished invocation (`success`, `failure` or `canceled`)", body = InvocationView)),
)]
pub async fn invoke_sync(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath((project, function)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<InvokeBody>,
) -> ApiResult<Json<InvocationView>> {
    use tracing::Instrument;
    async {
        let inv = submit(
            &state,
            &principal,
            &project,
            &function,
            body,
            Reply::Finished,
        )
        .await?;
        // The run goes on in its own task even if this caller disconnects. A calling run lends
        // its slots to the new run while it waits.
        let done = state
            .invocations
            .wait_for(principal.invocation_id(), &inv.id)
            .instrument(crate::stages::span("wait"))
            .await
            .map_err(|e| match e {
                // Recorded a moment ago, gone now: the database lost it (a PostgreSQL crash
                // before its flush, see `Reply::Finished`). Not the caller's mistake.
                EngineError::NotFound(_)
                | EngineError::Store(openloop_store::StoreError::NotFound(_)) => {
                    ApiError::Unavailable(format!(
                    "the record of invocation {} was lost by the database while it ran (did PostgreSQL restart?); whether its code finished is unknown, invoke it again if that is safe",
                    inv.id
                    ))
                }
                e => ApiError::from(e),
            })?;
        let _respond = crate::stages::span("respond").entered();
        Ok(Json(invocation_view(&done)?))
    }
    .instrument(crate::stages::span("invoke_sync"))
    .await
}

/// Queue a run and answer at once with its id.
#[utoipa::path(
    post,
    path = "/v1/functions/{project}/{function}/invoke_async",
    tag = "functions",
    params(
        ("project" = String, Path, description = "The project (deployment name)"),
        ("function" = String, Path, description = "The function's name"),
    ),
    request_body = InvokeBody,
    responses((status = 200, description = "The invocation as recorded (`queued`)", body = InvocationView)),
)]
pub async fn invoke_async(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath((project, function)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<InvokeBody>,
) -> ApiResult<Json<InvocationView>> {
    // Answered as recorded (`queued`); the run starts in its own task.
    let inv = submit(
        &state,
        &principal,
        &project,
        &function,
        body,
        Reply::Recorded,
    )
    .await?;
    Ok(Json(invocation_view(&inv)?))
}

/// An invocation's state, result or error.
///
/// With an API key any invocation; with a run's token the invocations that run started.
#[utoipa::path(
    get,
    path = "/v1/functions/invocations/{id}",
    tag = "functions",
    params(("id" = String, Path, description = "The invocation's id")),
    responses((status = 200, description = "The invocation", body = InvocationView)),
)]
pub async fn get_invocation(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<InvocationView>> {
    Ok(Json(invocation_view(
        &state
            .invocations
            .get_for(principal.invocation_id(), &id)
            .await?,
    )?))
}

/// Answer once the invocation has finished.
///
/// A run waiting on one it started lends it its slots.
#[utoipa::path(
    post,
    path = "/v1/functions/invocations/{id}/wait",
    tag = "functions",
    params(("id" = String, Path, description = "The invocation's id")),
    responses((status = 200, description = "The finished invocation", body = InvocationView)),
)]
pub async fn wait_invocation(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<InvocationView>> {
    state
        .invocations
        .get_for(principal.invocation_id(), &id)
        .await?;
    Ok(Json(invocation_view(
        &state
            .invocations
            .wait_for(principal.invocation_id(), &id)
            .await?,
    )?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only invocations with this status.
    status: Option<InvocationStatus>,
    /// Only invocations of this project.
    project: Option<String>,
    /// Only invocations of this function.
    function: Option<String>,
    /// The last id of the previous page.
    starting_after: Option<String>,
    /// Page size (default 50, at most 1000).
    limit: Option<i64>,
}

/// Cancel a queued or running invocation and what it started.
#[utoipa::path(
    post,
    path = "/v1/functions/invocations/{id}/cancel",
    tag = "functions",
    params(("id" = String, Path, description = "The invocation's id")),
    responses((status = 200, description = "The invocation, now `canceled`", body = InvocationView)),
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<InvocationView>> {
    principal.require_key()?;
    Ok(Json(invocation_view(
        &state.invocations.cancel(&id).await?,
    )?))
}

/// List invocations, newest first.
#[utoipa::path(
    get,
    path = "/v1/functions/invocations",
    tag = "functions",
    params(ListQuery),
    responses((status = 200, description = "A page of invocations", body = InvocationList)),
)]
pub async fn list_invocations(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<InvocationList>> {
    principal.require_key()?;
    let limit = page_limit(q.limit);
    let mut items = state
        .store
        .list_invocations(&InvocationFilter {
            status: q.status.map(|s| s.as_str().to_string()),
            project_name: q.project,
            function_name: q.function,
            before_id: q.starting_after,
            limit: limit + 1,
        })
        .await?;
    let has_more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    Ok(Json(InvocationList {
        invocations: items
            .iter()
            .map(invocation_view)
            .collect::<ApiResult<_>>()?,
        has_more,
    }))
}

/// List deployed functions with their request and response schemas.
#[utoipa::path(
    get,
    path = "/v1/functions",
    tag = "functions",
    responses((status = 200, description = "The functions of every active deployment", body = FunctionList)),
)]
pub async fn list_functions(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<FunctionList>> {
    principal.require_key()?;
    let mut functions = Vec::new();
    for dep in state.store.active_deployments().await? {
        let m = manifest_of(&dep)?;
        for f in m.functions {
            functions.push(FunctionInfo {
                project_name: dep.project_name.clone(),
                name: f.name,
                deployment_id: dep.id.clone(),
                is_async: f.is_async,
                request_schema: f.request_schema,
                response_schema: f.response_schema,
            });
        }
    }
    Ok(Json(FunctionList { functions }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only lines after this sequence number (default 0: from the start).
    after_seq: Option<i64>,
    /// Page size (default 1000, at most 10000).
    limit: Option<i64>,
}

/// An invocation's logs (stdout, stderr and `logging`), paged by `after_seq`.
#[utoipa::path(
    get,
    path = "/v1/functions/invocations/{id}/logs",
    tag = "functions",
    params(("id" = String, Path, description = "The invocation's id"), LogsQuery),
    responses((status = 200, description = "A page of log lines", body = InvocationLogs)),
)]
pub async fn invocation_logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Json<InvocationLogs>> {
    principal.require_key()?;
    let inv = state.store.get_invocation(&id).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let logs = state
        .store
        .invocation_logs(&id, q.after_seq.unwrap_or(0), limit + 1)
        .await?;
    let has_more = logs.len() as i64 > limit;
    let mut logs = logs;
    logs.truncate(limit as usize);
    Ok(Json(InvocationLogs {
        invocation_id: id,
        status: InvocationStatus::parse(&inv.status)?,
        next_seq: logs
            .last()
            .map(|l| l.seq)
            .unwrap_or(q.after_seq.unwrap_or(0)),
        logs,
        has_more,
    }))
}

/// An invocation's logs as Server-Sent Events.
///
/// `log` events (an `InvocationLog` each, `id` its sequence number) as lines arrive, then one
/// `end` event with the finished `InvocationView`.
#[utoipa::path(
    get,
    path = "/v1/functions/invocations/{id}/logs/stream",
    tag = "functions",
    params(("id" = String, Path, description = "The invocation's id"), LogsQuery),
    responses((status = 200, description = "Server-Sent Events: `log`, then `end`", body = SseEvent, content_type = "text/event-stream")),
)]
pub async fn stream_logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    principal.require_key()?;
    state.store.get_invocation(&id).await?;
    let stream = crate::streams::invocation_logs(state, id, q.after_seq.unwrap_or(0), false);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
