//! `/v1/blueprints`: Runloop's blueprint API (service in `services::devboxes::blueprints`).

use crate::auth::Principal;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::model::{
    BlueprintBuildLogsListView, BlueprintListView, BlueprintPreviewView, BlueprintView,
};
use crate::services::devboxes::{BlueprintListQuery, CreateBlueprint};
use crate::state::AppState;
use axum::extract::State;
use axum::{Extension, Json};

/// Create a blueprint and start its build; answers at once (`queued`). Follow it with
/// `GET /v1/blueprints/{id}` until `build_complete` or `failed`.
#[utoipa::path(
    post,
    path = "/v1/blueprints",
    tag = "blueprints",
    request_body = CreateBlueprint,
    responses(
        (status = 200, description = "The blueprint, queued for its build", body = BlueprintView),
        (status = 400, description = "The Dockerfile or a field cannot be built", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<CreateBlueprint>,
) -> ApiResult<Json<BlueprintView>> {
    Ok(Json(
        state.devboxes.create_blueprint(req, &principal).await?,
    ))
}

/// The caller's blueprints, newest first.
#[utoipa::path(
    get,
    path = "/v1/blueprints",
    tag = "blueprints",
    params(BlueprintListQuery),
    responses((status = 200, description = "A page of blueprints", body = BlueprintListView)),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<BlueprintListQuery>,
) -> ApiResult<Json<BlueprintListView>> {
    Ok(Json(state.devboxes.list_blueprints(&principal, &q).await?))
}

/// Public blueprints: always none (blueprints belong to their API key).
#[utoipa::path(
    get,
    path = "/v1/blueprints/list_public",
    tag = "blueprints",
    params(BlueprintListQuery),
    responses((status = 200, description = "An empty page", body = BlueprintListView)),
)]
pub async fn list_public(ApiQuery(_q): ApiQuery<BlueprintListQuery>) -> Json<BlueprintListView> {
    Json(BlueprintListView {
        blueprints: Vec::new(),
        has_more: false,
        total_count: Some(0),
    })
}

/// One blueprint, with its build status.
#[utoipa::path(
    get,
    path = "/v1/blueprints/{id}",
    tag = "blueprints",
    params(("id" = String, Path, description = "The blueprint's id")),
    responses(
        (status = 200, description = "The blueprint", body = BlueprintView),
        (status = 404, description = "No blueprint of yours has this id", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BlueprintView>> {
    Ok(Json(state.devboxes.get_blueprint(&id, &principal).await?))
}

/// Delete a blueprint; refused while it builds or while devboxes started from it are
/// running or suspended.
#[utoipa::path(
    post,
    path = "/v1/blueprints/{id}/delete",
    tag = "blueprints",
    params(("id" = String, Path, description = "The blueprint's id")),
    responses(
        (status = 200, description = "Deleted", body = BlueprintView),
        (status = 409, description = "Devboxes use it, or it is still building", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BlueprintView>> {
    Ok(Json(
        state.devboxes.delete_blueprint(&id, &principal).await?,
    ))
}

/// The build log so far (it grows while the blueprint builds).
#[utoipa::path(
    get,
    path = "/v1/blueprints/{id}/logs",
    tag = "blueprints",
    params(("id" = String, Path, description = "The blueprint's id")),
    responses((status = 200, description = "The build log", body = BlueprintBuildLogsListView)),
)]
pub async fn logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BlueprintBuildLogsListView>> {
    Ok(Json(state.devboxes.blueprint_logs(&id, &principal).await?))
}

/// The Dockerfile a create with this body would build, checked as a create is (400 for
/// what would not build), without building.
#[utoipa::path(
    post,
    path = "/v1/blueprints/preview",
    tag = "blueprints",
    request_body = CreateBlueprint,
    responses(
        (status = 200, description = "The Dockerfile", body = BlueprintPreviewView),
        (status = 400, description = "The Dockerfile or a field cannot be built", body = ErrorBody),
    ),
)]
pub async fn preview(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<CreateBlueprint>,
) -> ApiResult<Json<BlueprintPreviewView>> {
    Ok(Json(
        state.devboxes.preview_blueprint(req, &principal).await?,
    ))
}
