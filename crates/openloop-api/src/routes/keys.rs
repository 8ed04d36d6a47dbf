//! `/v1/keys`: API keys. The secret appears once, in the create response.

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::ApiJson;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
pub struct CreateKey {
    #[serde(default)]
    name: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    principal.require_key()?;
    let (key, secret) = state
        .store
        .create_key(body.name.as_deref().unwrap_or("api"))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"key": key, "secret": secret})),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<Value>> {
    principal.require_key()?;
    Ok(Json(json!({"keys": state.store.list_keys().await?})))
}

pub async fn revoke(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    principal.require_key()?;
    state.store.revoke_key(&id).await?;
    Ok(Json(json!({"revoked": id})))
}
