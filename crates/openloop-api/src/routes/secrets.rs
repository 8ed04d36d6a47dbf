//! `/v1/secrets`: Runloop's secrets API. No response ever holds a value.

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::ApiJson;
use crate::services::secrets::{Lookup, SecretListView, SecretView};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct CreateSecret {
    name: String,
    value: String,
}

#[derive(Deserialize)]
pub struct UpdateSecret {
    value: String,
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    starting_after: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<CreateSecret>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(state.secrets.create(&body.name, &body.value).await?))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<SecretListView>> {
    principal.require_key()?;
    Ok(Json(
        state
            .secrets
            .list(q.limit, q.starting_after.as_deref())
            .await?,
    ))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(state.secrets.get(Lookup::Name(&name)).await?))
}

pub async fn update(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
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

pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(state.secrets.delete(Lookup::Name(&name)).await?))
}

pub async fn get_by_id(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(state.secrets.get(Lookup::Id(&id)).await?))
}

pub async fn update_by_id(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateSecret>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(
        state.secrets.update(Lookup::Id(&id), &body.value).await?,
    ))
}

pub async fn delete_by_id(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<SecretView>> {
    principal.require_key()?;
    Ok(Json(state.secrets.delete(Lookup::Id(&id)).await?))
}
