//! `/v1/devboxes`: Runloop's devbox API.

use super::page_limit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::services::devboxes::{devbox_view, CreateDevbox, MAX_EXEC_OUTPUT};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Largest file `read_file_contents` returns.
const MAX_READ: usize = 64 << 20;

pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    // An empty body means "all defaults", as Runloop's client sends for `create()`.
    let req: CreateDevbox = if body.iter().all(u8::is_ascii_whitespace) {
        CreateDevbox::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?
    };
    Ok(Json(state.devboxes.create(req, &principal).await?))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(devbox_view(
        &state.devboxes.authorized(&id, &principal).await?,
    )))
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    starting_after: Option<String>,
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    principal.require_key()?;
    let limit = page_limit(q.limit);
    let mut items = state
        .store
        .list_devboxes(q.status.as_deref(), q.starting_after.as_deref(), limit + 1)
        .await?;
    let has_more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    Ok(Json(json!({
        "devboxes": items.iter().map(devbox_view).collect::<Vec<_>>(),
        "has_more": has_more,
        "total_count": items.len(),
        "remaining_count": if has_more { 1 } else { 0 },
    })))
}

#[derive(Deserialize)]
pub struct ExecBody {
    command: String,
    #[serde(default)]
    environment_variables: Option<BTreeMap<String, String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    shell_name: Option<String>,
}

pub async fn execute_sync(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ExecBody>,
) -> ApiResult<Json<Value>> {
    let _ = body.shell_name;
    let devbox = state.devboxes.running(&id, &principal).await?;
    let out = devbox
        .exec(
            &body.command,
            body.environment_variables.unwrap_or_default(),
            body.working_dir,
            MAX_EXEC_OUTPUT,
            None,
        )
        .await?;
    Ok(Json(json!({
        "devbox_id": id,
        "exit_status": out.exit.shell_code(),
        "stdout": String::from_utf8_lossy(&out.stdout),
        "stderr": String::from_utf8_lossy(&out.stderr),
        "output_truncated": out.truncated,
    })))
}

#[derive(Deserialize)]
pub struct WriteBody {
    file_path: String,
    contents: String,
}

pub async fn write_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<WriteBody>,
) -> ApiResult<Json<Value>> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    devbox
        .write_file(&body.file_path, body.contents.as_bytes())
        .await?;
    Ok(Json(
        json!({"devbox_id": id, "exit_status": 0, "stdout": "", "stderr": ""}),
    ))
}

#[derive(Deserialize)]
pub struct PathBody {
    file_path: String,
}

pub async fn read_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PathBody>,
) -> ApiResult<String> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    let bytes = devbox.read_file(&body.file_path, MAX_READ).await?;
    String::from_utf8(bytes).map_err(|_| {
        ApiError::BadRequest(format!(
            "{} is not UTF-8 text; use download_file for binary files",
            body.file_path
        ))
    })
}

pub async fn delete_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PathBody>,
) -> ApiResult<Json<Value>> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    devbox.delete_file(&body.file_path).await?;
    Ok(Json(
        json!({"devbox_id": id, "exit_status": 0, "stdout": "", "stderr": ""}),
    ))
}

pub async fn shutdown(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    state.devboxes.authorized(&id, &principal).await?;
    state
        .devboxes
        .shutdown(&id, Some("shut down on request"))
        .await?;
    Ok(Json(state.devboxes.view(&id).await?))
}
