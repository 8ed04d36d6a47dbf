//! The nodes of a cluster, as `GET /v1/nodes` shows them.

use serde::Serialize;
use utoipa::ToSchema;

/// Whether a node takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Heartbeating within its lease.
    Active,
    /// Its last heartbeat is older than the lease; another node takes it over at its next
    /// check.
    Expired,
    /// Shut down cleanly.
    Stopped,
    /// Stopped heartbeating and was taken over.
    Lost,
}

/// One node.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    /// Where the other nodes reach its API.
    pub address: String,
    pub status: NodeStatus,
    /// Grows at each start of the node (and when it rejoins after losing its lease).
    pub epoch: i64,
    pub started_at_ms: i64,
    pub last_heartbeat_ms: i64,
    /// Milliseconds since its last heartbeat, as the answering node sees it.
    pub heartbeat_age_ms: i64,
    pub lost_at_ms: Option<i64>,
    /// The node that took over its runs and devboxes.
    pub taken_over_by: Option<String>,
    /// Invocations running on it now.
    pub running_invocations: i64,
    /// Devboxes living on it now (not shut down or failed).
    pub live_devboxes: i64,
    /// Whether this is the node that answered.
    pub this_node: bool,
}

/// Every node that has joined, and the lease they are held to.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
    /// How long a node may go without a heartbeat before another takes over its work.
    pub lease_ms: i64,
    /// Whether the nodes share a PostgreSQL database (cluster mode).
    pub clustered: bool,
}
