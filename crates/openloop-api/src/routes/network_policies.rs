//! `/v1/network-policies`: Runloop's network policies (create, retrieve, update, list, delete).

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::services::network_policies::{
    CreateNetworkPolicy, NetworkPolicyListView, NetworkPolicyView, UpdateNetworkPolicy,
};
use crate::state::AppState;
use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::IntoParams;

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only the policy with this id.
    id: Option<String>,
    /// Only policies whose name contains this.
    name: Option<String>,
    /// At most this many (default 20, at most 5000).
    limit: Option<i64>,
    /// The id of the last policy of the previous page.
    starting_after: Option<String>,
}

/// Create a network policy.
#[utoipa::path(
    post,
    path = "/v1/network-policies",
    tag = "network-policies",
    request_body = CreateNetworkPolicy,
    responses((status = 200, description = "The policy", body = NetworkPolicyView)),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<CreateNetworkPolicy>,
) -> ApiResult<Json<NetworkPolicyView>> {
    principal.require_key()?;
    Ok(Json(state.network_policies.create(body).await?))
}

/// List network policies, newest first.
#[utoipa::path(
    get,
    path = "/v1/network-policies",
    tag = "network-policies",
    params(ListQuery),
    responses((status = 200, description = "A page of policies", body = NetworkPolicyListView)),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListQuery>,
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

/// A network policy.
#[utoipa::path(
    get,
    path = "/v1/network-policies/{id}",
    tag = "network-policies",
    params(("id" = String, Path, description = "The policy's id")),
    responses((status = 200, description = "The policy", body = NetworkPolicyView)),
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<NetworkPolicyView>> {
    principal.require_key()?;
    Ok(Json(state.network_policies.get(&id).await?))
}

/// Update a network policy (every field optional; sandboxes started afterwards get it).
#[utoipa::path(
    post,
    path = "/v1/network-policies/{id}",
    tag = "network-policies",
    params(("id" = String, Path, description = "The policy's id")),
    request_body = UpdateNetworkPolicy,
    responses((status = 200, description = "The policy", body = NetworkPolicyView)),
)]
pub async fn update(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateNetworkPolicy>,
) -> ApiResult<Json<NetworkPolicyView>> {
    principal.require_key()?;
    Ok(Json(state.network_policies.update(&id, body).await?))
}

/// Delete a network policy.
#[utoipa::path(
    post,
    path = "/v1/network-policies/{id}/delete",
    tag = "network-policies",
    params(("id" = String, Path, description = "The policy's id")),
    responses((status = 200, description = "What was deleted", body = NetworkPolicyView)),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<NetworkPolicyView>> {
    principal.require_key()?;
    Ok(Json(state.network_policies.delete(&id).await?))
}
