//! `/v1/functions/...`: invoking functions and reading invocations.

use super::page_limit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::services::invocations::manifest_of;
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures::Stream;
use openloop_store::invocations::{Invocation, InvocationFilter};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;

#[derive(Deserialize)]
pub struct InvokeBody {
    request: Option<Value>,
}

/// The JSON view of an invocation, as every endpoint returns it.
pub fn invocation_view(inv: &Invocation) -> Value {
    let parse = |s: &Option<String>| {
        s.as_deref()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
    };
    json!({
        "id": inv.id,
        "project_name": inv.project_name,
        "function_name": inv.function_name,
        "deployment_id": inv.deployment_id,
        "status": inv.status,
        "request": serde_json::from_str::<Value>(&inv.request).unwrap_or(Value::Null),
        "result": parse(&inv.result),
        "error": parse(&inv.error),
        "parent_invocation_id": inv.parent_invocation_id,
        "created_at_ms": inv.created_at_ms,
        "started_at_ms": inv.started_at_ms,
        "ended_at_ms": inv.ended_at_ms,
    })
}

async fn submit(
    state: &AppState,
    principal: &Principal,
    project: &str,
    function: &str,
    body: InvokeBody,
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
        .submit(project, function, request, parent)
        .await
}

pub async fn invoke_sync(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((project, function)): Path<(String, String)>,
    ApiJson(body): ApiJson<InvokeBody>,
) -> ApiResult<Json<Value>> {
    let inv = submit(&state, &principal, &project, &function, body).await?;
    // The run goes on in its own task even if this caller disconnects. A calling run lends
    // its slots to the new run while it waits.
    let done = state.invocations.wait_for(&principal, &inv.id).await?;
    Ok(Json(invocation_view(&done)))
}

pub async fn invoke_async(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((project, function)): Path<(String, String)>,
    ApiJson(body): ApiJson<InvokeBody>,
) -> ApiResult<Json<Value>> {
    // Answered as recorded (`queued`); the run starts in its own task.
    let inv = submit(&state, &principal, &project, &function, body).await?;
    Ok(Json(invocation_view(&inv)))
}

/// With an API key any invocation; with a run's token the invocations that run started.
pub async fn get_invocation(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(invocation_view(
        &state.invocations.get_for(&principal, &id).await?,
    )))
}

/// Answer once the invocation has finished. A run waiting on one it started lends it its slots.
pub async fn wait_invocation(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    state.invocations.get_for(&principal, &id).await?;
    Ok(Json(invocation_view(
        &state.invocations.wait_for(&principal, &id).await?,
    )))
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    project: Option<String>,
    function: Option<String>,
    starting_after: Option<String>,
    limit: Option<i64>,
}

pub async fn cancel(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    principal.require_key()?;
    Ok(Json(invocation_view(&state.invocations.cancel(&id).await?)))
}

pub async fn list_invocations(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    principal.require_key()?;
    let limit = page_limit(q.limit);
    let mut items = state
        .store
        .list_invocations(&InvocationFilter {
            status: q.status,
            project_name: q.project,
            function_name: q.function,
            before_id: q.starting_after,
            limit: limit + 1,
        })
        .await?;
    let has_more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    Ok(Json(json!({
        "invocations": items.iter().map(invocation_view).collect::<Vec<_>>(),
        "has_more": has_more,
    })))
}

pub async fn list_functions(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<Value>> {
    principal.require_key()?;
    let mut functions = Vec::new();
    for dep in state.store.active_deployments().await? {
        let m = manifest_of(&dep)?;
        for f in m.functions {
            functions.push(json!({
                "project_name": dep.project_name,
                "name": f.name,
                "deployment_id": dep.id,
                "is_async": f.is_async,
                "request_schema": f.request_schema,
                "response_schema": f.response_schema,
            }));
        }
    }
    Ok(Json(json!({ "functions": functions })))
}

#[derive(Deserialize)]
pub struct LogsQuery {
    after_seq: Option<i64>,
    limit: Option<i64>,
}

pub async fn invocation_logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Json<Value>> {
    principal.require_key()?;
    let inv = state.store.get_invocation(&id).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let logs = state
        .store
        .invocation_logs(&id, q.after_seq.unwrap_or(0), limit + 1)
        .await?;
    let has_more = logs.len() as i64 > limit;
    let logs = &logs[..logs.len().min(limit as usize)];
    Ok(Json(json!({
        "invocation_id": id,
        "status": inv.status,
        "logs": logs,
        "next_seq": logs.last().map(|l| l.seq).unwrap_or(q.after_seq.unwrap_or(0)),
        "has_more": has_more,
    })))
}

/// Server-Sent Events: `log` events as lines arrive, then one `end` event with the invocation.
pub async fn stream_logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    principal.require_key()?;
    state.store.get_invocation(&id).await?;
    let notifier = state.notifier.clone();
    let key = id.clone();
    let stream = follow(notifier, key, q.after_seq.unwrap_or(0), move |after| {
        let (state, id) = (state.clone(), id.clone());
        async move {
            let inv = state.store.get_invocation(&id).await.ok()?;
            let logs = state.store.invocation_logs(&id, after, PAGE).await.ok()?;
            let events = logs
                .iter()
                .map(|l| {
                    (
                        l.seq,
                        Event::default()
                            .event("log")
                            .id(l.seq.to_string())
                            .json_data(l),
                    )
                })
                .collect();
            let end = inv.is_finished().then(|| {
                Event::default()
                    .event("end")
                    .json_data(invocation_view(&inv))
            });
            Some(Page { events, end })
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Rows read per round of a followed stream.
pub(crate) const PAGE: i64 = 1000;

/// One round of a followed stream: new events with their cursor, and the final event once
/// the followed thing has finished.
pub(crate) struct Page {
    pub events: Vec<(i64, Result<Event, axum::Error>)>,
    pub end: Option<Result<Event, axum::Error>>,
}

/// Server-Sent Events that follow something recorded in the store: send what is new after
/// the cursor, send `end` once finished, otherwise wait for a change notification of `key`
/// (subscribed before each read, so nothing is missed).
pub(crate) fn follow<F, Fut>(
    notifier: crate::notify::Notifier,
    key: String,
    mut after: i64,
    poll: F,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: Fn(i64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<Page>> + Send,
{
    async_stream(move |tx| async move {
        let mut sub = notifier.subscribe(&key);
        loop {
            let Some(page) = poll(after).await else {
                return;
            };
            let full = page.events.len() as i64 == PAGE;
            for (cursor, ev) in page.events {
                after = cursor;
                if tx.send(ev.unwrap_or_default()).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            if let Some(end) = page.end {
                let _ = tx.send(end.unwrap_or_default()).await;
                return;
            }
            sub.changed().await;
        }
    })
}

/// A stream fed by a task through a channel.
pub(crate) fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}
