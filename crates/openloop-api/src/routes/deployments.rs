//! `/v1/deployments`: build a repository into a project's new deployment.

use super::functions::{follow, Page, PAGE};
use super::page_limit;
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::ApiJson;
use crate::services::deployments::CreateDeployment;
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures::Stream;
use openloop_store::deployments::Deployment;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;

fn view(d: &Deployment) -> Value {
    let manifest: Option<Value> = d
        .manifest
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok());
    let functions = manifest
        .as_ref()
        .and_then(|m| m["functions"].as_array().cloned())
        .map(|fs| fs.iter().map(|f| f["name"].clone()).collect::<Vec<_>>());
    json!({
        "id": d.id,
        "project_name": d.project_name,
        "source": d.source,
        "ref": d.git_ref,
        "status": d.status,
        "failure_reason": d.failure_reason,
        "functions": functions,
        "created_at_ms": d.created_at_ms,
        "started_at_ms": d.started_at_ms,
        "ended_at_ms": d.ended_at_ms,
    })
}

pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<CreateDeployment>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    principal.require_key()?;
    let dep = state.deployments.create(body).await?;
    Ok((StatusCode::CREATED, Json(view(&dep))))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    principal.require_key()?;
    Ok(Json(view(&state.store.get_deployment(&id).await?)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    project: Option<String>,
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    principal.require_key()?;
    let items = state
        .store
        .list_deployments(q.project.as_deref(), page_limit(q.limit))
        .await?;
    Ok(Json(
        json!({"deployments": items.iter().map(view).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
pub struct LogsQuery {
    after_seq: Option<i64>,
}

pub async fn logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Json<Value>> {
    principal.require_key()?;
    let d = state.store.get_deployment(&id).await?;
    let lines = state
        .store
        .deployment_logs(&id, q.after_seq.unwrap_or(0), 10_000)
        .await?;
    Ok(Json(
        json!({"deployment_id": id, "status": d.status, "failure_reason": d.failure_reason, "logs": lines}),
    ))
}

/// Server-Sent Events: `log` events for build-log lines, then `end` with the deployment.
pub async fn stream_logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    principal.require_key()?;
    state.store.get_deployment(&id).await?;
    let notifier = state.notifier.clone();
    let key = id.clone();
    let stream = follow(notifier, key, 0, move |after| {
        let (state, id) = (state.clone(), id.clone());
        async move {
            let d = state.store.get_deployment(&id).await.ok()?;
            let lines = state.store.deployment_logs(&id, after, PAGE).await.ok()?;
            let events = lines
                .iter()
                .map(|l| {
                    (
                        l.seq,
                        Ok(Event::default().event("log").data(l.line.clone())),
                    )
                })
                .collect();
            let end = matches!(d.status.as_str(), "deployed" | "failed")
                .then(|| Event::default().event("end").json_data(view(&d)));
            Some(Page { events, end })
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
