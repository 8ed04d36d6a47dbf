//! Runloop's `DevboxView`.

use openloop_store::devboxes::{DevboxRecord, Transition};
use serde_json::{json, Value};

pub fn devbox_view(r: &DevboxRecord, transitions: &[Transition]) -> Value {
    let spec: Value = serde_json::from_str(&r.spec).unwrap_or(Value::Null);
    json!({
        "id": r.id,
        "name": r.name,
        "status": r.status,
        "create_time_ms": r.created_at_ms,
        "end_time_ms": r.ended_at_ms,
        "failure_reason": r.failure_reason,
        "shutdown_reason": r.shutdown_reason,
        "status_message": r.status_message,
        "state_transitions": transitions,
        "initiator_type": "api",
        "initiator_id": r.invocation_id,
        "launch_parameters": spec.get("launch_parameters").cloned().unwrap_or(json!({})),
        "metadata": spec.get("metadata").cloned().unwrap_or(json!({})),
        "network": spec.get("network").cloned().unwrap_or(json!("none")),
        "capabilities": [],
        "blueprint_id": null,
        "snapshot_id": null,
    })
}
