//! `/v1/keys`: API keys. The secret appears once, in the create response.

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::model::{CreatedKey, KeyList, RevokedKey};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
pub struct CreateKey {
    /// A label to tell keys apart (default `api`).
    #[serde(default)]
    name: Option<String>,
}

/// Create an API key (the secret is shown once).
#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "keys",
    request_body = CreateKey,
    responses((status = 201, description = "The key and its secret", body = CreatedKey)),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    principal.require_key()?;
    let (key, secret) = state
        .store
        .create_key(body.name.as_deref().unwrap_or("api"))
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { key, secret })))
}

/// List API keys (never their secrets).
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    responses((status = 200, description = "Every key, revoked ones included", body = KeyList)),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<KeyList>> {
    principal.require_key()?;
    Ok(Json(KeyList {
        keys: state.store.list_keys().await?,
    }))
}

/// Revoke an API key (not the one making the request: use another key for that, so the
/// last key cannot lock everyone out).
#[utoipa::path(
    post,
    path = "/v1/keys/{id}/revoke",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The key is revoked", body = RevokedKey)),
)]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RevokedKey>> {
    principal.require_key()?;
    if matches!(&principal, Principal::Key { key_id } if *key_id == id) {
        return Err(ApiError::Conflict(
            "a key cannot revoke itself; revoke it with another key (`openloop keys create`)"
                .into(),
        ));
    }
    state.store.revoke_key(&id).await?;
    Ok(Json(RevokedKey { revoked: id }))
}
