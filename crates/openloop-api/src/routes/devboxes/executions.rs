//! Devbox executions: run a command (sync, async, idempotent), read, wait for, kill and stream it.

use super::*;

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
    /// `execute`: seconds to wait for completion before answering, fractions allowed
    /// (default 25, at most 60 is used).
    #[serde(default)]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1e9)]
    optimistic_timeout: Option<Number>,
    /// Give the command a standard input fed by `send_std_in` (not for `execute_sync`);
    /// otherwise it reads `/dev/null`.
    #[serde(default)]
    attach_stdin: Option<bool>,
    #[serde(default)]
    shell_name: Option<String>,
}

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LastN {
    /// Keep only the last N lines of each stream's output; a whole number (`5.0` is 5).
    #[param(value_type = Option<f64>, minimum = 0, maximum = 9007199254740992_f64, multiple_of = 1)]
    last_n: Option<Number>,
}

impl LastN {
    fn get(&self) -> ApiResult<Option<usize>> {
        let n = numbers::whole("last_n", self.last_n.as_ref(), 0..=usize::MAX as u64)?;
        Ok(n.map(|n| n as usize))
    }
}

async fn start(
    state: &AppState,
    principal: &Principal,
    id: &str,
    body: ExecBody,
) -> ApiResult<Arc<Execution>> {
    let _ = body.shell_name;
    state
        .devboxes
        .execute_with_stdin(
            id,
            principal,
            body.command,
            body.environment_variables.unwrap_or_default(),
            body.working_dir,
            body.command_id,
            body.attach_stdin == Some(true),
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
    if body.attach_stdin == Some(true) {
        return Err(ApiError::BadRequest(
            "attach_stdin is not valid for execute_sync (nothing could send the input while it waits); use execute_async and send_std_in".into(),
        ));
    }
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
    // Checked before the command starts: a bad number must not leave a command running.
    let wait = wait_time("optimistic_timeout", body.optimistic_timeout.as_ref())?;
    let last_n = q.get()?;
    let exec = start(&state, &principal, &id, body).await?;
    exec.wait_for(&[ExecutionStatus::Completed], wait).await;
    Ok(Json(exec.view(last_n).await))
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
    let wait = wait_time("timeout_seconds", req.timeout_seconds.as_ref())?;
    let last_n = q.get()?;
    let exec = state.devboxes.execution(&id, &eid, &principal).await?;
    if exec.wait_for(&req.statuses, wait).await {
        Ok(Json(exec.view(last_n).await).into_response())
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
    /// Start at this byte of the stream's output (default 0); a whole number (`10.0` is 10).
    #[param(value_type = Option<f64>, minimum = 0, maximum = 9007199254740992_f64, multiple_of = 1)]
    offset: Option<Number>,
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
    offset: Option<Number>,
    which: Stream,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let offset = numbers::whole("offset", offset.as_ref(), 0..=usize::MAX as u64)?;
    let exec = state.devboxes.execution(&id, &eid, &principal).await?;
    let mut offset = offset.unwrap_or(0) as usize;
    let stream = crate::streams::async_stream(move |tx| async move {
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
