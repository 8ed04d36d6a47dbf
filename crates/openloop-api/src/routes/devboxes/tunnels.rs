//! A devbox's tunnel (`enable_tunnel`, `remove_tunnel`), its resource usage, and the
//! standard input of its executions (`send_std_in`).

use super::*;
use crate::model::{ResourceUsageView, SendStdinResult, TunnelView};
use crate::services::devboxes::tunnels::TunnelConfig;
use openloop_sandbox::StdinInput;

/// Give a running devbox a tunnel: HTTP to `{port}-{tunnel_key}.tunnel.{tunnel domain}`
/// reaches `127.0.0.1:{port}` inside it.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/enable_tunnel",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    request_body(content = Option<TunnelConfig>, description = "An empty body is an open tunnel"),
    responses(
        (status = 200, description = "The tunnel (the same one when asked again with the same settings)", body = TunnelView),
        (status = 409, description = "The devbox is not running, or has a tunnel with other settings", body = ErrorBody),
    ),
)]
pub async fn enable_tunnel(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    body: Bytes,
) -> ApiResult<Json<TunnelView>> {
    let config: TunnelConfig = parse_body(&body)?;
    Ok(Json(
        state
            .devboxes
            .enable_tunnel(&id, &principal, config)
            .await?,
    ))
}

/// Remove the devbox's tunnel: its URL answers 404 at once.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/remove_tunnel",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    responses(
        (status = 200, description = "The tunnel is gone", body = Empty),
        (status = 404, description = "No such devbox, or it has no tunnel", body = ErrorBody),
    ),
)]
pub async fn remove_tunnel(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Empty>> {
    state.devboxes.remove_tunnel(&id, &principal).await?;
    Ok(Json(Empty {}))
}

/// CPU, memory and disk the devbox used.
#[utoipa::path(
    get,
    path = "/v1/devboxes/{id}/usage",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    responses((status = 200, description = "Its usage", body = ResourceUsageView)),
)]
pub async fn usage(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ResourceUsageView>> {
    Ok(Json(state.devboxes.usage(&id, &principal).await?))
}

/// What to send to a command's standard input: exactly one of `text` and `signal`.
#[derive(Deserialize, Default, ToSchema)]
pub struct StdinBody {
    /// Text for the command's standard input (not empty).
    #[serde(default)]
    text: Option<String>,
    /// `EOF` closes the command's standard input; `INTERRUPT` sends SIGINT to it.
    #[serde(default)]
    signal: Option<StdinSignal>,
}

/// A signal for `send_std_in`.
#[derive(Deserialize, Clone, Copy, ToSchema)]
pub enum StdinSignal {
    #[serde(rename = "EOF")]
    Eof,
    #[serde(rename = "INTERRUPT")]
    Interrupt,
}

/// Send text or a signal to the standard input of an execution started with `attach_stdin`;
/// answers once the devbox's agent has it.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/executions/{eid}/send_std_in",
    tag = "devboxes",
    params(
        ("id" = String, Path, description = "The devbox's id"),
        ("eid" = String, Path, description = "The execution's id"),
    ),
    request_body = StdinBody,
    responses(
        (status = 200, description = "The input was handed to the command", body = SendStdinResult),
        (status = 400, description = "Not exactly one of `text` and `signal`; or the execution has completed, its input is closed, or it was started without attach_stdin", body = ErrorBody),
    ),
)]
pub async fn send_std_in(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath((id, eid)): ApiPath<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<SendStdinResult>> {
    let req: StdinBody = parse_body(&body)?;
    let input = match (req.text, req.signal) {
        (Some(text), None) if !text.is_empty() => StdinInput::Data(text.into_bytes()),
        (None, Some(StdinSignal::Eof)) => StdinInput::Eof,
        (None, Some(StdinSignal::Interrupt)) => StdinInput::Interrupt,
        _ => {
            return Err(ApiError::BadRequest(
                "send exactly one of a non-empty `text` and a `signal` (EOF or INTERRUPT)".into(),
            ))
        }
    };
    let exec = state.devboxes.execution(&id, &eid, &principal).await?;
    if exec.is_completed() {
        return Err(ApiError::BadRequest(format!(
            "execution {eid} has completed; its standard input is gone"
        )));
    }
    exec.stdin.send(&eid, input).await?;
    Ok(Json(SendStdinResult {
        devbox_id: id,
        execution_id: eid,
        success: true,
    }))
}
