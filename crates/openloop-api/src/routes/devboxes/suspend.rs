//! Suspending and resuming devboxes.

use super::*;

/// Suspend a running devbox: its processes end (executions are killed) and its memory is
/// freed; its disk is kept. It answers once the devbox is `suspended`.
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/suspend",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    responses(
        (status = 200, description = "The devbox, `suspended`", body = DevboxView),
        (status = 409, description = "The devbox is not running", body = ErrorBody),
    ),
)]
pub async fn suspend(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DevboxView>> {
    Ok(Json(state.devboxes.suspend(&id, &principal).await?))
}

/// Resume a suspended devbox with its disk as it was: its launch commands and entrypoint run
/// again. It answers once the devbox runs (or has failed).
#[utoipa::path(
    post,
    path = "/v1/devboxes/{id}/resume",
    tag = "devboxes",
    params(("id" = String, Path, description = "The devbox's id")),
    responses(
        (status = 200, description = "The devbox, `running` (or `failure`)", body = DevboxView),
        (status = 409, description = "The devbox is not suspended", body = ErrorBody),
    ),
)]
pub async fn resume(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DevboxView>> {
    Ok(Json(state.devboxes.resume(&id, &principal).await?))
}
