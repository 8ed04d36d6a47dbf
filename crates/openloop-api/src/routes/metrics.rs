//! `/v1/metrics/...`: the server's own figures.

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::stages::{self, StageStats};
use axum::{Extension, Json};

/// Wall time per stage of the invocation path since the last reset (see `stages`).
#[utoipa::path(
    get,
    path = "/v1/metrics/stages",
    tag = "server",
    responses((status = 200, description = "Each stage's count, mean, p50 and p99 in microseconds", body = StageStats)),
)]
pub async fn stages(Extension(principal): Extension<Principal>) -> ApiResult<Json<StageStats>> {
    principal.require_key()?;
    Ok(Json(stages::snapshot()))
}

/// Forget the stage figures (before a measured series).
#[utoipa::path(
    post,
    path = "/v1/metrics/stages/reset",
    tag = "server",
    responses((status = 200, description = "The figures are cleared", body = StageStats)),
)]
pub async fn reset_stages(
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<StageStats>> {
    principal.require_key()?;
    stages::reset();
    Ok(Json(stages::snapshot()))
}
