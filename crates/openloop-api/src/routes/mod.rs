//! The HTTP surface. Handlers parse, call a service and map the error; nothing more.
//!
//! Every route is registered through `utoipa_axum::routes!`, which adds the handler's
//! `#[utoipa::path]` operation to the OpenAPI document in the same call that adds it to the
//! router: a route cannot be served without being documented (checked by the tests in
//! [`openapi`]).

mod blueprints;
mod deployments;
mod devboxes;
pub mod forward;
mod functions;
mod keys;
mod metrics;
mod network_policies;
mod nodes;
pub mod openapi;
mod repositories;
mod secrets;
pub mod tunnel_proxy;

use crate::auth::require_auth;
use crate::error::{ApiError, ErrorBody};
use crate::model::Health;
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, State};
use axum::{Json, Router};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest text file `write_file_contents` takes (the JSON body around it included).
const FILE_LIMIT: usize = 64 << 20;
/// Largest file `upload_file` takes.
const UPLOAD_LIMIT: usize = 4 << 30;

/// The routes anyone may call: `/health`, `/openapi.json`, and repositories' webhooks (a
/// forge holds no API key; each delivery is authenticated by its signature).
fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(openapi::document))
        .routes(routes!(repositories::webhook))
}

/// The routes that need an API key or a run's token.
fn protected_routes() -> OpenApiRouter<AppState> {
    let (schemas, paths, write_file) = routes!(devboxes::write_file);
    let write_file = (
        schemas,
        paths,
        write_file.layer(DefaultBodyLimit::max(FILE_LIMIT)),
    );
    let (schemas, paths, upload_file) = routes!(devboxes::upload_file);
    let upload_file = (
        schemas,
        paths,
        upload_file.layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
    );
    OpenApiRouter::new()
        .routes(routes!(functions::list_functions))
        .routes(routes!(functions::list_invocations))
        .routes(routes!(functions::get_invocation))
        .routes(routes!(functions::invocation_logs))
        .routes(routes!(functions::stream_logs))
        .routes(routes!(functions::invoke_sync))
        .routes(routes!(functions::invoke_async))
        .routes(routes!(functions::cancel))
        .routes(routes!(functions::wait_invocation))
        .routes(routes!(deployments::create, deployments::list))
        .routes(routes!(deployments::get))
        .routes(routes!(deployments::logs))
        .routes(routes!(deployments::stream_logs))
        .routes(routes!(devboxes::create, devboxes::list))
        .routes(routes!(devboxes::create_and_await_running))
        .routes(routes!(devboxes::get))
        .routes(routes!(devboxes::wait_for_status))
        .routes(routes!(devboxes::execute_sync))
        .routes(routes!(devboxes::execute_async))
        .routes(routes!(devboxes::execute))
        .routes(routes!(devboxes::get_execution))
        .routes(routes!(devboxes::wait_for_execution))
        .routes(routes!(devboxes::kill_execution))
        .routes(routes!(devboxes::stream_stdout))
        .routes(routes!(devboxes::stream_stderr))
        .routes(write_file)
        .routes(routes!(devboxes::read_file))
        .routes(routes!(devboxes::delete_file))
        .routes(upload_file)
        .routes(routes!(devboxes::download_file))
        .routes(routes!(devboxes::keep_alive))
        .routes(routes!(devboxes::shutdown))
        .routes(routes!(devboxes::suspend))
        .routes(routes!(devboxes::resume))
        .routes(routes!(devboxes::snapshot_disk))
        .routes(routes!(devboxes::snapshot_disk_async))
        .routes(routes!(devboxes::list_disk_snapshots))
        .routes(routes!(devboxes::update_disk_snapshot))
        .routes(routes!(devboxes::delete_disk_snapshot))
        .routes(routes!(devboxes::disk_snapshot_status))
        .routes(routes!(blueprints::create, blueprints::list))
        .routes(routes!(blueprints::list_public))
        .routes(routes!(blueprints::get))
        .routes(routes!(blueprints::delete))
        .routes(routes!(blueprints::logs))
        .routes(routes!(blueprints::preview))
        .routes(routes!(devboxes::enable_tunnel))
        .routes(routes!(devboxes::remove_tunnel))
        .routes(routes!(devboxes::usage))
        .routes(routes!(devboxes::send_std_in))
        .routes(routes!(metrics::stages))
        .routes(routes!(metrics::reset_stages))
        .routes(routes!(nodes::list))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(secrets::create, secrets::list))
        .routes(routes!(secrets::get, secrets::update))
        .routes(routes!(secrets::delete))
        .routes(routes!(secrets::get_by_id))
        .routes(routes!(secrets::update_by_id))
        .routes(routes!(secrets::delete_by_id))
        .routes(routes!(network_policies::create, network_policies::list))
        .routes(routes!(network_policies::get, network_policies::update))
        .routes(routes!(network_policies::delete))
        .routes(routes!(repositories::create, repositories::list))
        .routes(routes!(repositories::get, repositories::delete))
        .routes(routes!(repositories::deliveries))
}

/// Every route with its documentation, before any layer (what `/openapi.json` is made of).
pub(crate) fn documented_routes() -> OpenApiRouter<AppState> {
    public_routes().merge(protected_routes())
}

pub fn router(state: AppState) -> Router {
    // Authentication first, then (cluster mode) a devbox call goes to the devbox's node.
    let protected = protected_routes()
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::to_owner,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_auth,
        ));
    let (router, _) = public_routes().merge(protected).split_for_parts();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .with_state(state)
}

/// Liveness and database check (no key needed).
#[utoipa::path(
    get,
    path = "/health",
    tag = "server",
    security(()),
    responses((status = 200, description = "The server and its database answer", body = Health)),
)]
async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.store.ping().await?;
    Ok(Json(Health { status: "ok" }))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no such endpoint: {}; see /openapi.json",
        uri.path()
    ))
}

async fn method_not_allowed() -> (axum::http::StatusCode, Json<ErrorBody>) {
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        Json(ErrorBody::new(
            "method_not_allowed",
            "this endpoint does not take that HTTP method; see /openapi.json",
        )),
    )
}

/// `limit` query parameters: default 50, at most 1000.
pub(crate) fn page_limit(limit: Option<i64>) -> i64 {
    limit.unwrap_or(50).clamp(1, 1000)
}
