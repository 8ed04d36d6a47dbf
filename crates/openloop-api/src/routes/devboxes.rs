//! `/v1/devboxes`: Runloop's devbox API.

use super::page_limit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::services::devboxes::executions::{Execution, Stream};
use crate::services::devboxes::CreateDevbox;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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

pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    // An empty body means "all defaults", as Runloop's client sends for `create()`.
    let req: CreateDevbox = parse_body(&body)?;
    Ok(Json(state.devboxes.create(req, &principal).await?))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let rec = state.devboxes.authorized(&id, &principal).await?;
    Ok(Json(state.devboxes.view_of(&rec).await?))
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
    let mut views = Vec::with_capacity(items.len());
    for rec in &items {
        views.push(state.devboxes.view_of(rec).await?);
    }
    Ok(Json(json!({
        "devboxes": views,
        "has_more": has_more,
        "remaining_count": if has_more { 1 } else { 0 },
    })))
}

#[derive(Deserialize, Default)]
pub struct WaitBody {
    #[serde(default)]
    statuses: Vec<String>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

fn wait_time(seconds: Option<u64>) -> Duration {
    seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WAIT)
        .min(MAX_WAIT)
}

fn timed_out(what: &str) -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        Json(json!({"error": {"code": "timeout", "message": format!("{what} did not reach the requested status in time; ask again")}})),
    )
        .into_response()
}

pub async fn wait_for_status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: WaitBody = parse_body(&body)?;
    if req.statuses.is_empty() {
        return Err(ApiError::BadRequest(
            "`statuses` must name at least one status".into(),
        ));
    }
    state.devboxes.authorized(&id, &principal).await?;
    match state
        .devboxes
        .wait_for_status(&id, &req.statuses, wait_time(req.timeout_seconds))
        .await?
    {
        Some(view) => Ok(Json(view).into_response()),
        None => Ok(timed_out(&format!("devbox {id}"))),
    }
}

#[derive(Deserialize)]
pub struct ExecBody {
    command: String,
    #[serde(default)]
    environment_variables: Option<BTreeMap<String, String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    command_id: Option<String>,
    #[serde(default)]
    optimistic_timeout: Option<u64>,
    #[serde(default)]
    attach_stdin: Option<bool>,
    #[serde(default)]
    shell_name: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct LastN {
    last_n: Option<String>,
}

impl LastN {
    fn get(&self) -> ApiResult<Option<usize>> {
        match self.last_n.as_deref() {
            None | Some("") => Ok(None),
            Some(n) => n.parse().map(Some).map_err(|_| {
                ApiError::BadRequest(format!("last_n must be a number of lines, not {n:?}"))
            }),
        }
    }
}

async fn start(
    state: &AppState,
    principal: &Principal,
    id: &str,
    body: ExecBody,
) -> ApiResult<Arc<Execution>> {
    if body.attach_stdin == Some(true) {
        return Err(ApiError::BadRequest(
            "attach_stdin is not supported by Openloop yet; run the command without it".into(),
        ));
    }
    let _ = body.shell_name;
    state
        .devboxes
        .execute(
            id,
            principal,
            body.command,
            body.environment_variables.unwrap_or_default(),
            body.working_dir,
            body.command_id,
        )
        .await
}

pub async fn execute_sync(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ExecBody>,
) -> ApiResult<Json<Value>> {
    let exec = start(&state, &principal, &id, body).await?;
    // No timeout: the command runs as long as it needs to.
    exec.wait_for(&["completed".to_string()], Duration::MAX)
        .await;
    if let Some(err) = exec.error() {
        return Err(ApiError::Conflict(format!(
            "devbox {id} stopped while the command ran: {err}"
        )));
    }
    Ok(Json(exec.sync_view().await))
}

pub async fn execute_async(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ExecBody>,
) -> ApiResult<Json<Value>> {
    let exec = start(&state, &principal, &id, body).await?;
    Ok(Json(exec.view(None).await))
}

/// `execute`: start (idempotently by `command_id`) and wait up to `optimistic_timeout`.
pub async fn execute(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<LastN>,
    ApiJson(body): ApiJson<ExecBody>,
) -> ApiResult<Json<Value>> {
    let wait = wait_time(body.optimistic_timeout);
    let exec = start(&state, &principal, &id, body).await?;
    exec.wait_for(&["completed".to_string()], wait).await;
    Ok(Json(exec.view(q.get()?).await))
}

pub async fn get_execution(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, eid)): Path<(String, String)>,
    Query(q): Query<LastN>,
) -> ApiResult<Json<Value>> {
    let exec = state.devboxes.execution(&id, &eid, &principal).await?;
    Ok(Json(exec.view(q.get()?).await))
}

pub async fn wait_for_execution(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, eid)): Path<(String, String)>,
    Query(q): Query<LastN>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: WaitBody = parse_body(&body)?;
    if req.statuses.is_empty() {
        return Err(ApiError::BadRequest(
            "`statuses` must name at least one status".into(),
        ));
    }
    let exec = state.devboxes.execution(&id, &eid, &principal).await?;
    if exec
        .wait_for(&req.statuses, wait_time(req.timeout_seconds))
        .await
    {
        Ok(Json(exec.view(q.get()?).await).into_response())
    } else {
        Ok(timed_out(&format!("execution {eid}")))
    }
}

pub async fn kill_execution(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, eid)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let exec = state.devboxes.execution(&id, &eid, &principal).await?;
    exec.kill();
    Ok(Json(exec.view(None).await))
}

#[derive(Deserialize)]
pub struct OffsetQuery {
    offset: Option<String>,
}

async fn stream_output(
    state: AppState,
    principal: Principal,
    id: String,
    eid: String,
    offset: Option<String>,
    which: Stream,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let exec = state.devboxes.execution(&id, &eid, &principal).await?;
    let mut offset: usize = match offset.as_deref() {
        None | Some("") => 0,
        Some(o) => o.parse().map_err(|_| {
            ApiError::BadRequest(format!("offset must be a byte offset, not {o:?}"))
        })?,
    };
    let stream = super::functions::async_stream(move |tx| async move {
        let mut changes = exec.changes();
        loop {
            let (data, done) = exec.read_from(which, offset).await;
            if !data.is_empty() {
                offset += data.len();
                let chunk = json!({"output": String::from_utf8_lossy(&data), "offset": offset});
                if tx
                    .send(Event::default().data(chunk.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
                if !done {
                    // More may already be kept (events carry at most 1 MiB): read on.
                    continue;
                }
            }
            if done {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub async fn stream_stdout(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, eid)): Path<(String, String)>,
    Query(q): Query<OffsetQuery>,
) -> ApiResult<impl IntoResponse> {
    stream_output(state, principal, id, eid, q.offset, Stream::Stdout).await
}

pub async fn stream_stderr(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, eid)): Path<(String, String)>,
    Query(q): Query<OffsetQuery>,
) -> ApiResult<impl IntoResponse> {
    stream_output(state, principal, id, eid, q.offset, Stream::Stderr).await
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
    #[serde(alias = "path")]
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

/// `upload_file`: multipart with a `path` field and a `file` part, streamed into the devbox.
pub async fn upload_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    mut form: Multipart,
) -> ApiResult<Json<Value>> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("the upload is over the size limit".into())
        } else {
            ApiError::BadRequest(format!("malformed multipart upload: {}", e.body_text()))
        }
    };
    let mut path: Option<String> = None;
    let mut written = false;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("path") => path = Some(field.text().await.map_err(bad)?),
            Some("file") => {
                let Some(p) = path.clone() else {
                    return Err(ApiError::BadRequest(
                        "send the `path` field before the `file` part".into(),
                    ));
                };
                let mut writer = devbox.upload(&p).await?;
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    writer.send(&chunk).await?;
                }
                writer.finish().await?;
                written = true;
            }
            _ => {}
        }
    }
    if !written {
        return Err(ApiError::BadRequest(
            "the upload needs a `path` field and a `file` part".into(),
        ));
    }
    Ok(Json(json!({})))
}

/// `download_file`: the file's bytes, streamed.
pub async fn download_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PathBody>,
) -> ApiResult<Response> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    let mut reader = devbox.download(&body.file_path).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    tokio::spawn(async move {
        loop {
            match reader.next().await {
                Ok(Some(chunk)) => {
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

pub async fn keep_alive(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    state.devboxes.keep_alive(&id, &principal).await?;
    Ok(Json(json!({})))
}

pub async fn shutdown(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    state.devboxes.authorized(&id, &principal).await?;
    state
        .devboxes
        .shutdown(&id, "api_shutdown", "shut down on request")
        .await?;
    Ok(Json(state.devboxes.view(&id).await?))
}
