//! `/v1/secrets`: Runloop's secrets API. No response ever holds a value.

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::services::secrets::{Lookup, SecretListView, SecretView};
use crate::state::AppState;
use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, ToSchema)]
pub struct CreateSecret {
    /// Letters, digits and `_`.
    name: String,
    /// Sealed at rest and never returned.
    value: String,
}

#[derive(Deserialize, ToSchema)]
pub struct UpdateSecret {
    value: String,
}

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// At most this many (default 20).
    limit: Option<i64>,
    /// The id of the last secret of the previous page.
    starting_after: Option<String>,
}

/// Create a secret (the value is sealed and never returned).
#[utoipa::path(
    post,
    path = "/v1/secrets",
    tag = "secrets",
    request_body = CreateSecret,
    responses((status = 200, description = "The secret, without its value", body = SecretView)),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<CreateSecret>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(state.secrets.create(&body.name, &body.value).await?))
}

/// List secrets, newest first, without values.
#[utoipa::path(
    get,
    path = "/v1/secrets",
    tag = "secrets",
    params(ListQuery),
    responses((status = 200, description = "A page of secrets", body = SecretListView)),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<SecretListView>> {
    principal.require_key()?;
    Ok(Json(
        state
            .secrets
            .list(q.limit, q.starting_after.as_deref())
            .await?,
    ))
}

/// A secret by name, without its value.
#[utoipa::path(
    get,
    path = "/v1/secrets/{name}",
    tag = "secrets",
    params(("name" = String, Path, description = "The secret's name")),
    responses((status = 200, description = "The secret", body = SecretView)),
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(state.secrets.get(Lookup::Name(&name)).await?))
}

/// Replace a secret's value.
#[utoipa::path(
    post,
    path = "/v1/secrets/{name}",
    tag = "secrets",
    params(("name" = String, Path, description = "The secret's name")),
    request_body = UpdateSecret,
    responses((status = 200, description = "The secret", body = SecretView)),
)]
pub async fn update(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateSecret>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(
        state
            .secrets
            .update(Lookup::Name(&name), &body.value)
            .await?,
    ))
}

/// Delete a secret by name.
#[utoipa::path(
    post,
    path = "/v1/secrets/{name}/delete",
    tag = "secrets",
    params(("name" = String, Path, description = "The secret's name")),
    responses((status = 200, description = "What was deleted", body = SecretView)),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(state.secrets.delete(Lookup::Name(&name)).await?))
}

/// A secret by id, without its value.
#[utoipa::path(
    get,
    path = "/v1/secrets/id/{id}",
    tag = "secrets",
    params(("id" = String, Path, description = "The secret's id")),
    responses((status = 200, description = "The secret", body = SecretView)),
)]
pub async fn get_by_id(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(state.secrets.get(Lookup::Id(&id)).await?))
}

/// Replace a secret's value, by id.
#[utoipa::path(
    post,
    path = "/v1/secrets/id/{id}/update",
    tag = "secrets",
    params(("id" = String, Path, description = "The secret's id")),
    request_body = UpdateSecret,
    responses((status = 200, description = "The secret", body = SecretView)),
)]
pub async fn update_by_id(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateSecret>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(
        state.secrets.update(Lookup::Id(&id), &body.value).await?,
    ))
}

/// Delete a secret by id.
#[utoipa::path(
    post,
    path = "/v1/secrets/id/{id}/delete",
    tag = "secrets",
    params(("id" = String, Path, description = "The secret's id")),
    responses((status = 200, description = "What was deleted", body = SecretView)),
)]
pub async fn delete_by_id(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(state.secrets.delete(Lookup::Id(&id)).await?))
}
