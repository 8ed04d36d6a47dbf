//! `/v1/network-policies`: Runloop's network policies (create, retrieve, update, list, delete).

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::ApiJson;
use crate::services::network_policies::{
    CreateNetworkPolicy, NetworkPolicyListView, NetworkPolicyView, UpdateNetworkPolicy,
};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct ListQuery {
    id: Option<String>,
    name: Option<String>,
    limit: Option<i64>,
    starting_after: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<CreateNetworkPolicy>,
) -> ApiResult<Json<NetworkPolicyView>> {
    principal.require_key()?;
    Ok(Json(state.network_policies.create(body).await?))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<NetworkPolicyListView>> {
    principal.require_key()?;
    Ok(Json(
        state
            .network_policies
            .list(
                q.id.as_deref(),
                q.name.as_deref(),
                q.limit,
                q.starting_after.as_deref(),
            )
            .await?,
    ))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<NetworkPolicyView>> {
    principal.require_key()?;
    Ok(Json(state.network_policies.get(&id).await?))
}

pub async fn update(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateNetworkPolicy>,
) -> ApiResult<Json<NetworkPolicyView>> {
    principal.require_key()?;
    Ok(Json(state.network_policies.update(&id, body).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<NetworkPolicyView>> {
    principal.require_key()?;
    Ok(Json(state.network_policies.delete(&id).await?))
}
