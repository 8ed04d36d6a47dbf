//! `/v1/nodes`: the nodes of the cluster, their heartbeats, runs and devboxes.

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::model::nodes::{NodeList, NodeStatus, NodeView};
use crate::state::AppState;
use axum::extract::State;
use axum::{Extension, Json};
use openloop_store::now_ms;
use std::collections::HashMap;

/// Every node that has joined, with its heartbeat and what it runs now.
#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "server",
    responses((status = 200, description = "The nodes, by id", body = NodeList)),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<NodeList>> {
    principal.require_key()?;
    let store = &state.store;
    let runs: HashMap<String, i64> = store
        .runs_per_node()
        .await?
        .into_iter()
        .map(|l| (l.node_id, l.count))
        .collect();
    let devboxes: HashMap<String, i64> = store
        .devboxes_per_node()
        .await?
        .into_iter()
        .map(|l| (l.node_id, l.count))
        .collect();
    let lease_ms = state.config.node_lease.as_millis() as i64;
    let now = now_ms();
    let nodes = store
        .list_nodes()
        .await?
        .into_iter()
        .map(|n| {
            let age = now - n.heartbeat_at_ms;
            let status = match n.status.as_str() {
                "lost" => NodeStatus::Lost,
                "stopped" => NodeStatus::Stopped,
                _ if age > lease_ms => NodeStatus::Expired,
                _ => NodeStatus::Active,
            };
            NodeView {
                running_invocations: runs.get(&n.id).copied().unwrap_or(0),
                live_devboxes: devboxes.get(&n.id).copied().unwrap_or(0),
                this_node: n.id == state.config.node_id,
                id: n.id,
                address: n.address,
                status,
                epoch: n.epoch,
                started_at_ms: n.started_at_ms,
                last_heartbeat_ms: n.heartbeat_at_ms,
                heartbeat_age_ms: age,
                lost_at_ms: n.lost_at_ms,
                taken_over_by: n.taken_over_by,
            }
        })
        .collect();
    Ok(Json(NodeList {
        nodes,
        lease_ms,
        clustered: state.config.is_cluster(),
    }))
}
