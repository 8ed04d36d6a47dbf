//! The HTTP surface. Handlers parse, call a service and map the error; nothing more.

mod deployments;
mod devboxes;
mod functions;
mod keys;
mod network_policies;
mod openapi;
mod secrets;

use crate::auth::require_auth;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

/// Largest text file `write_file_contents` takes (the JSON body around it included).
const FILE_LIMIT: usize = 64 << 20;
/// Largest file `upload_file` takes.
const UPLOAD_LIMIT: usize = 4 << 30;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/functions", get(functions::list_functions))
        .route(
            "/v1/functions/invocations",
            get(functions::list_invocations),
        )
        .route(
            "/v1/functions/invocations/{id}",
            get(functions::get_invocation),
        )
        .route(
            "/v1/functions/invocations/{id}/logs",
            get(functions::invocation_logs),
        )
        .route(
            "/v1/functions/invocations/{id}/logs/stream",
            get(functions::stream_logs),
        )
        .route(
            "/v1/functions/{project}/{function}/invoke_sync",
            post(functions::invoke_sync),
        )
        .route(
            "/v1/functions/{project}/{function}/invoke_async",
            post(functions::invoke_async),
        )
        .route(
            "/v1/functions/invocations/{id}/cancel",
            post(functions::cancel),
        )
        .route(
            "/v1/functions/invocations/{id}/wait",
            post(functions::wait_invocation),
        )
        .route(
            "/v1/deployments",
            post(deployments::create).get(deployments::list),
        )
        .route("/v1/deployments/{id}", get(deployments::get))
        .route("/v1/deployments/{id}/logs", get(deployments::logs))
        .route(
            "/v1/deployments/{id}/logs/stream",
            get(deployments::stream_logs),
        )
        .route("/v1/devboxes", post(devboxes::create).get(devboxes::list))
        .route(
            "/v1/devboxes/create_and_await_running",
            post(devboxes::create),
        )
        .route("/v1/devboxes/{id}", get(devboxes::get))
        .route(
            "/v1/devboxes/{id}/wait_for_status",
            post(devboxes::wait_for_status),
        )
        .route(
            "/v1/devboxes/{id}/execute_sync",
            post(devboxes::execute_sync),
        )
        .route(
            "/v1/devboxes/{id}/execute_async",
            post(devboxes::execute_async),
        )
        .route("/v1/devboxes/{id}/execute", post(devboxes::execute))
        .route(
            "/v1/devboxes/{id}/executions/{eid}",
            get(devboxes::get_execution),
        )
        .route(
            "/v1/devboxes/{id}/executions/{eid}/wait_for_status",
            post(devboxes::wait_for_execution),
        )
        .route(
            "/v1/devboxes/{id}/executions/{eid}/kill",
            post(devboxes::kill_execution),
        )
        .route(
            "/v1/devboxes/{id}/executions/{eid}/stream_stdout_updates",
            get(devboxes::stream_stdout),
        )
        .route(
            "/v1/devboxes/{id}/executions/{eid}/stream_stderr_updates",
            get(devboxes::stream_stderr),
        )
        .route(
            "/v1/devboxes/{id}/write_file_contents",
            post(devboxes::write_file).layer(DefaultBodyLimit::max(FILE_LIMIT)),
        )
        .route(
            "/v1/devboxes/{id}/read_file_contents",
            post(devboxes::read_file),
        )
        .route("/v1/devboxes/{id}/delete_file", post(devboxes::delete_file))
        .route(
            "/v1/devboxes/{id}/upload_file",
            post(devboxes::upload_file).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route(
            "/v1/devboxes/{id}/download_file",
            post(devboxes::download_file),
        )
        .route("/v1/devboxes/{id}/keep_alive", post(devboxes::keep_alive))
        .route("/v1/devboxes/{id}/shutdown", post(devboxes::shutdown))
        .route("/v1/secrets", post(secrets::create).get(secrets::list))
        .route(
            "/v1/secrets/{name}",
            get(secrets::get).post(secrets::update),
        )
        .route("/v1/secrets/{name}/delete", post(secrets::delete))
        .route("/v1/secrets/id/{id}", get(secrets::get_by_id))
        .route("/v1/secrets/id/{id}/update", post(secrets::update_by_id))
        .route("/v1/secrets/id/{id}/delete", post(secrets::delete_by_id))
        .route(
            "/v1/network-policies",
            post(network_policies::create).get(network_policies::list),
        )
        .route(
            "/v1/network-policies/{id}",
            get(network_policies::get).post(network_policies::update),
        )
        .route(
            "/v1/network-policies/{id}/delete",
            post(network_policies::delete),
        )
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{id}/revoke", post(keys::revoke))
        .route("/openapi.json", get(openapi::document))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_auth,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ping().await?;
    Ok(Json(json!({"status": "ok"})))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no such endpoint: {}; see /openapi.json",
        uri.path()
    ))
}

async fn method_not_allowed() -> (axum::http::StatusCode, Json<serde_json::Value>) {
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        Json(
            json!({"error": {"code": "method_not_allowed", "message": "this endpoint does not take that HTTP method; see /openapi.json"}}),
        ),
    )
}

/// `limit` query parameters: default 50, at most 1000.
pub(crate) fn page_limit(limit: Option<i64>) -> i64 {
    limit.unwrap_or(50).clamp(1, 1000)
}
