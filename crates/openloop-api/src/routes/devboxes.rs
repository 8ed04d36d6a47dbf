//! `/v1/devboxes`: Runloop's devbox API.

use super::page_limit;
use crate::auth::Principal;
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::model::{
    DevboxList, DevboxStatus, DevboxView, Empty, ExecutionResult, ExecutionStatus, ExecutionView,
    SseEvent, UploadForm,
};
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
    /// Page size (default 50, at most 1000).
    limit: Option<i64>,
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
    let limit = page_limit(q.limit);
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
    /// How long to wait (default 25 s, at most 60 s); then 408.
    #[serde(default)]
    #[schema(minimum = 0)]
    timeout_seconds: Option<u64>,
}

/// Wait until the execution has one of `statuses`.
#[derive(Deserialize, Default, ToSchema)]
pub struct ExecutionWaitBody {
    /// At least one status.
    #[serde(default)]
    #[schema(min_items = 1, required = true)]
    statuses: Vec<ExecutionStatus>,
    /// How long to wait (default 25 s, at most 60 s); then 408.
    #[serde(default)]
    #[schema(minimum = 0)]
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

/// A command to run in the devbox's shell.
#[derive(Deserialize, ToSchema)]
pub struct ExecBody {
    /// A shell command line.
    command: String,
    #[serde(default)]
    environment_variables: Option<BTreeMap<String, String>>,
    #[serde(default)]
    working_dir: Option<String>,
    /// Makes `execute` idempotent: the same id answers with the same execution.
    #[serde(default)]
    command_id: Option<String>,
    /// `execute`: seconds to wait for completion before answering (default 25, at most 60).
    #[serde(default)]
    #[schema(minimum = 0)]
    optimistic_timeout: Option<u64>,
    /// Not supported (must be absent or false).
    #[serde(default)]
    attach_stdin: Option<bool>,
    #[serde(default)]
    shell_name: Option<String>,
}

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LastN {
    /// Keep only the last N lines of each stream's output.
    #[param(pattern = "^[0-9]*$")]
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

/// Run a command and wait for it (no timeout).
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/execute_sync",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body = ExecBody,
    responses((status = 200, description = "The finished command", body = ExecutionResult)),
)]
pub async fn execute_sync(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ExecBody>,
) -> ApiResult<Json<ExecutionResult>> {
    let exec = start(&state, &principal, &id, body).await?;
    // No timeout: the command runs as long as it needs to.
    exec.wait_for(&[ExecutionStatus::Completed], Duration::MAX)
        .await;
    if let Some(err) = exec.error() {
        return Err(ApiError::Conflict(format!(
            "devbox {id} stopped while the command ran: {err}"
        )));
    }
    Ok(Json(exec.sync_view().await))
}

/// Start a command; answers at once with its execution.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/execute_async",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body = ExecBody,
    responses((status = 200, description = "The execution, `running`", body = ExecutionView)),
)]
pub async fn execute_async(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ExecBody>,
) -> ApiResult<Json<ExecutionView>> {
    let exec = start(&state, &principal, &id, body).await?;
    Ok(Json(exec.view(None).await))
}

/// Start a command (idempotently by `command_id`) and wait up to `optimistic_timeout`.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/execute",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id"), LastN),
    request_body = ExecBody,
    responses((status = 200, description = "The execution, `completed` if it finished in time", body = ExecutionView)),
)]
pub async fn execute(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LastN>,
    ApiJson(body): ApiJson<ExecBody>,
) -> ApiResult<Json<ExecutionView>> {
    let wait = wait_time(body.optimistic_timeout);
    let exec = start(&state, &principal, &id, body).await?;
    exec.wait_for(&[ExecutionStatus::Completed], wait).await;
    Ok(Json(exec.view(q.get()?).await))
}

/// An execution's status and output so far.
#[utoipa::path(
    get,
    path = "/v1/devboxes/{id}/executions/{eid}",
    tag = "devboxes",
    params(
        ("id" = String, Path, description = "The devbox's id"),
        ("eid" = String, Path, description = "The execution's id"),
        LastN,
    ),
    responses((status = 200, description = "The execution", body = ExecutionView)),
)]
pub async fn get_execution(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath((id, eid)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<LastN>,
) -> ApiResult<Json<ExecutionView>> {
    let exec = state.devboxes.execution(&id, &eid, &principal).await?;
    Ok(Json(exec.view(q.get()?).await))
}

/// Wait (up to `timeout_seconds`) for an execution status; 408 otherwise.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/executions/{eid}/wait_for_status",
    tag = "devboxes",
    params(
        ("id" = String, Path, description = "The devbox's id"),
        ("eid" = String, Path, description = "The execution's id"),
        LastN,
    ),
    request_body = ExecutionWaitBody,
    responses(
        (status = 200, description = "The execution, in one of the statuses", body = ExecutionView),
        (status = 408, description = "Not reached in time; ask again", body = ErrorBody),
    ),
)]
pub async fn wait_for_execution(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath((id, eid)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<LastN>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: ExecutionWaitBody = parse_body(&body)?;
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

/// Kill a running command and its children.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/executions/{eid}/kill",
    tag = "devboxes",
    params(
        ("id" = String, Path, description = "The devbox's id"),
        ("eid" = String, Path, description = "The execution's id"),
    ),
    responses((status = 200, description = "The execution, `completed`", body = ExecutionView)),
)]
pub async fn kill_execution(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath((id, eid)): ApiPath<(String, String)>,
) -> ApiResult<Json<ExecutionView>> {
    let exec = state.devboxes.execution(&id, &eid, &principal).await?;
    exec.kill();
    Ok(Json(exec.view(None).await))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OffsetQuery {
    /// Start at this byte of the stream's output (default 0).
    #[param(pattern = "^[0-9]*$")]
    offset: Option<String>,
}

/// One event of a streamed output: text from `offset - len` to `offset`.
#[derive(Serialize, ToSchema)]
pub struct OutputChunk {
    output: String,
    /// The byte offset after this chunk (resume from here).
    offset: usize,
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
                let chunk = OutputChunk {
                    output: String::from_utf8_lossy(&data).into_owned(),
                    offset,
                };
                let Ok(event) = Event::default().json_data(&chunk) else {
                    return;
                };
                if tx.send(event).await.is_err() {
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

/// Follow an execution's stdout as Server-Sent Events (an `OutputChunk` each).
#[utoipa::path(
    get,
    path = "/v1/devboxes/{id}/executions/{eid}/stream_stdout_updates",
    tag = "devboxes",
    params(
        ("id" = String, Path, description = "The devbox's id"),
        ("eid" = String, Path, description = "The execution's id"),
        OffsetQuery,
    ),
    responses((status = 200, description = "Server-Sent Events, each data an `OutputChunk`; ends when the command has and all output was sent", body = SseEvent, content_type = "text/event-stream")),
)]
pub async fn stream_stdout(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath((id, eid)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<OffsetQuery>,
) -> ApiResult<impl IntoResponse> {
    stream_output(state, principal, id, eid, q.offset, Stream::Stdout).await
}

/// Follow an execution's stderr as Server-Sent Events (an `OutputChunk` each).
#[utoipa::path(
    get,
    path = "/v1/devboxes/{id}/executions/{eid}/stream_stderr_updates",
    tag = "devboxes",
    params(
        ("id" = String, Path, description = "The devbox's id"),
        ("eid" = String, Path, description = "The execution's id"),
        OffsetQuery,
    ),
    responses((status = 200, description = "Server-Sent Events, each data an `OutputChunk`; ends when the command has and all output was sent", body = SseEvent, content_type = "text/event-stream")),
)]
pub async fn stream_stderr(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath((id, eid)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<OffsetQuery>,
) -> ApiResult<impl IntoResponse> {
    stream_output(state, principal, id, eid, q.offset, Stream::Stderr).await
}

/// A text file to write.
#[derive(Deserialize, ToSchema)]
pub struct WriteBody {
    /// Where in the devbox (relative paths are from the home directory).
    #[schema(min_length = 1)]
    file_path: String,
    contents: String,
}

/// The answer of a file write or delete: Runloop's execution detail with exit status 0.
fn file_done(id: String) -> ExecutionResult {
    ExecutionResult {
        devbox_id: id,
        exit_status: Some(0),
        stdout: String::new(),
        stderr: String::new(),
    }
}

/// Write a text file.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/write_file_contents",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body = WriteBody,
    responses((status = 200, description = "Written", body = ExecutionResult)),
)]
pub async fn write_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<WriteBody>,
) -> ApiResult<Json<ExecutionResult>> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    devbox
        .write_file(&body.file_path, body.contents.as_bytes())
        .await
        .map_err(|e| state.devboxes.op_error(&id, e))?;
    Ok(Json(file_done(id)))
}

/// A file in the devbox.
#[derive(Deserialize, ToSchema)]
pub struct PathBody {
    /// The file's path (`path` is accepted too).
    #[serde(alias = "path")]
    #[schema(min_length = 1)]
    file_path: String,
}

/// Read a text file.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/read_file_contents",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body = PathBody,
    responses((status = 200, description = "The file's text (UTF-8)", body = String, content_type = "text/plain")),
)]
pub async fn read_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PathBody>,
) -> ApiResult<String> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    let bytes = devbox
        .read_file(&body.file_path, MAX_READ)
        .await
        .map_err(|e| state.devboxes.op_error(&id, e))?;
    String::from_utf8(bytes).map_err(|_| {
        ApiError::BadRequest(format!(
            "{} is not UTF-8 text; use download_file for binary files",
            body.file_path
        ))
    })
}

/// Delete a file.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/delete_file",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body = PathBody,
    responses((status = 200, description = "Deleted", body = ExecutionResult)),
)]
pub async fn delete_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PathBody>,
) -> ApiResult<Json<ExecutionResult>> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    devbox
        .delete_file(&body.file_path)
        .await
        .map_err(|e| state.devboxes.op_error(&id, e))?;
    Ok(Json(file_done(id)))
}

/// Upload a file (multipart: a `path` field, then a `file` part), streamed into the devbox.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/upload_file",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "Uploaded", body = Empty)),
)]
pub async fn upload_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<Json<Empty>> {
    let mut form = form.map_err(|e| {
        ApiError::BadRequest(format!(
            "send the upload as multipart/form-data: {}",
            e.body_text()
        ))
    })?;
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
                let lost = |e| state.devboxes.op_error(&id, e);
                let mut writer = devbox.upload(&p).await.map_err(lost)?;
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    writer.send(&chunk).await.map_err(lost)?;
                }
                writer.finish().await.map_err(lost)?;
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
    Ok(Json(Empty {}))
}

/// Download a file's bytes, streamed.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/download_file",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body = PathBody,
    responses((status = 200, description = "The file's bytes", body = Vec<u8>, content_type = "application/octet-stream")),
)]
pub async fn download_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PathBody>,
) -> ApiResult<Response> {
    let devbox = state.devboxes.running(&id, &principal).await?;
    let mut reader = devbox
        .download(&body.file_path)
        .await
        .map_err(|e| state.devboxes.op_error(&id, e))?;
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
