//! `/openapi.json`: a machine-readable list of the API's operations.

use axum::Json;
use serde_json::{json, Map, Value};

const OPERATIONS: &[(&str, &str, &str)] = &[
    (
        "get",
        "/health",
        "Liveness and database check (no key needed)",
    ),
    (
        "get",
        "/v1/functions",
        "List deployed functions with their request and response schemas",
    ),
    (
        "post",
        "/v1/functions/{project}/{function}/invoke_sync",
        "Run a function and answer with the finished invocation",
    ),
    (
        "post",
        "/v1/functions/{project}/{function}/invoke_async",
        "Queue a run and answer at once with its id",
    ),
    (
        "get",
        "/v1/functions/invocations",
        "List invocations (filters: status, project, function; paged)",
    ),
    (
        "get",
        "/v1/functions/invocations/{id}",
        "An invocation's state, result or error",
    ),
    (
        "get",
        "/v1/functions/invocations/{id}/logs",
        "An invocation's logs (paged by after_seq)",
    ),
    (
        "get",
        "/v1/functions/invocations/{id}/logs/stream",
        "An invocation's logs as Server-Sent Events",
    ),
    (
        "post",
        "/v1/functions/invocations/{id}/cancel",
        "Cancel a queued or running invocation and what it started",
    ),
    (
        "post",
        "/v1/functions/invocations/{id}/wait",
        "Answer once the invocation has finished (a run may wait on those it started)",
    ),
    (
        "post",
        "/v1/deployments",
        "Deploy a repository: {source, ref?, name?}",
    ),
    ("get", "/v1/deployments", "List deployments"),
    ("get", "/v1/deployments/{id}", "A deployment's status"),
    (
        "get",
        "/v1/deployments/{id}/logs",
        "A deployment's build log",
    ),
    (
        "get",
        "/v1/deployments/{id}/logs/stream",
        "A deployment's build log as Server-Sent Events",
    ),
    ("post", "/v1/devboxes", "Create a devbox"),
    (
        "post",
        "/v1/devboxes/create_and_await_running",
        "Create a devbox (answers once it runs)",
    ),
    ("get", "/v1/devboxes", "List devboxes"),
    ("get", "/v1/devboxes/{id}", "A devbox"),
    (
        "post",
        "/v1/devboxes/{id}/execute_sync",
        "Run a command and wait for it",
    ),
    (
        "post",
        "/v1/devboxes/{id}/wait_for_status",
        "Wait (up to timeout_seconds) for a devbox status; 408 otherwise",
    ),
    (
        "post",
        "/v1/devboxes/{id}/execute_async",
        "Start a command; answers with its execution",
    ),
    (
        "post",
        "/v1/devboxes/{id}/execute",
        "Start a command by command_id and wait up to optimistic_timeout",
    ),
    (
        "get",
        "/v1/devboxes/{id}/executions/{eid}",
        "An execution's status and output so far",
    ),
    (
        "post",
        "/v1/devboxes/{id}/executions/{eid}/wait_for_status",
        "Wait for an execution status; 408 otherwise",
    ),
    (
        "post",
        "/v1/devboxes/{id}/executions/{eid}/kill",
        "Kill a running command and its children",
    ),
    (
        "get",
        "/v1/devboxes/{id}/executions/{eid}/stream_stdout_updates",
        "Follow stdout as Server-Sent Events",
    ),
    (
        "get",
        "/v1/devboxes/{id}/executions/{eid}/stream_stderr_updates",
        "Follow stderr as Server-Sent Events",
    ),
    (
        "post",
        "/v1/devboxes/{id}/upload_file",
        "Upload a file (multipart: path, file)",
    ),
    (
        "post",
        "/v1/devboxes/{id}/download_file",
        "Download a file's bytes",
    ),
    (
        "post",
        "/v1/devboxes/{id}/keep_alive",
        "Reset the devbox's idle timer",
    ),
    (
        "post",
        "/v1/devboxes/{id}/write_file_contents",
        "Write a text file",
    ),
    (
        "post",
        "/v1/devboxes/{id}/read_file_contents",
        "Read a text file",
    ),
    ("post", "/v1/devboxes/{id}/delete_file", "Delete a file"),
    ("post", "/v1/devboxes/{id}/shutdown", "Shut a devbox down"),
    (
        "post",
        "/v1/keys",
        "Create an API key (the secret is shown once)",
    ),
    ("get", "/v1/keys", "List API keys"),
    ("post", "/v1/keys/{id}/revoke", "Revoke an API key"),
    (
        "post",
        "/v1/secrets",
        "Create a secret: {name, value} (the value is sealed and never returned)",
    ),
    (
        "get",
        "/v1/secrets",
        "List secrets without values (paged: limit, starting_after)",
    ),
    (
        "get",
        "/v1/secrets/{name}",
        "A secret by name, without its value",
    ),
    (
        "post",
        "/v1/secrets/{name}",
        "Replace a secret's value: {value}",
    ),
    (
        "post",
        "/v1/secrets/{name}/delete",
        "Delete a secret by name",
    ),
    (
        "get",
        "/v1/secrets/id/{id}",
        "A secret by id, without its value",
    ),
    (
        "post",
        "/v1/secrets/id/{id}/update",
        "Replace a secret's value by id: {value}",
    ),
    (
        "post",
        "/v1/secrets/id/{id}/delete",
        "Delete a secret by id",
    ),
    (
        "post",
        "/v1/network-policies",
        "Create a network policy: {name, description, allow_all, allowed_cidrs, allowed_hostnames, …}",
    ),
    (
        "get",
        "/v1/network-policies",
        "List network policies (filters: id, name; paged: limit, starting_after)",
    ),
    ("get", "/v1/network-policies/{id}", "A network policy"),
    (
        "post",
        "/v1/network-policies/{id}",
        "Update a network policy (every field optional)",
    ),
    (
        "post",
        "/v1/network-policies/{id}/delete",
        "Delete a network policy",
    ),
];

pub async fn document() -> Json<Value> {
    let mut paths = Map::new();
    for (method, path, summary) in OPERATIONS {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = json!({
            "summary": summary,
            "security": if *path == "/health" { json!([]) } else { json!([{"bearer": []}]) },
            "responses": {"default": {"description": "JSON; errors are {\"error\": {\"code\", \"message\"}}"}},
        });
    }
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "Openloop API", "version": env!("CARGO_PKG_VERSION")},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }))
}
