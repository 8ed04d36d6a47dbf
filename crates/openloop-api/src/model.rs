//! The API's response bodies and the statuses they carry: every JSON body the server answers
//! with is one of these types, and `/openapi.json` is generated from them.
//!
//! The store keeps statuses as text; they become enums here, and a stored value that is not
//! one of them is an internal error (never passed through unchecked).

use crate::error::ApiResult;
use openloop_store::deployments::{Deployment, LogLine};
use openloop_store::devboxes::{DevboxRecord, Transition};
use openloop_store::invocations::{Invocation, InvocationLog};
use openloop_store::keys::ApiKey;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

mod blueprints;
pub mod nodes;
mod snapshots;
pub use blueprints::*;
pub use snapshots::*;

/// Declares a status enum (snake_case on the wire and in the store) with `as_str`, a checked
/// parse and `Display`. Used for every status and kind the API stores as text.
macro_rules! status_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vm])* $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The status of a stored record; anything else is an internal error.
            pub fn parse(s: &str) -> $crate::error::ApiResult<Self> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::error::ApiError::Internal(format!(
                        concat!("a stored record has an unknown ", stringify!($name), " {:?}"),
                        other
                    ))),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use status_enum;

status_enum! {
    /// Where an invocation is: `queued`, then `running`, then one of the three final statuses.
    InvocationStatus {
        Queued => "queued",
        Running => "running",
        Success => "success",
        Failure => "failure",
        Canceled => "canceled",
    }
}

status_enum! {
    /// Where a deployment's build is.
    DeploymentStatus {
        Queued => "queued",
        Building => "building",
        Deployed => "deployed",
        Failed => "failed",
    }
}

status_enum! {
    /// Runloop's devbox statuses. Openloop devboxes go `provisioning` → `initializing` →
    /// `running` → `shutdown` (or `failure`); a running devbox can be suspended
    /// (`suspending` → `suspended`: no processes, its disk kept) and resumed
    /// (`resuming` → `running`).
    DevboxStatus {
        Provisioning => "provisioning",
        Initializing => "initializing",
        Running => "running",
        Suspending => "suspending",
        Suspended => "suspended",
        Resuming => "resuming",
        Failure => "failure",
        Shutdown => "shutdown",
    }
}

status_enum! {
    /// Who may use a devbox's tunnel: anyone with its URL (`open`), or only requests that
    /// carry its token (`authenticated`).
    TunnelAuthMode {
        Open => "open",
        Authenticated => "authenticated",
    }
}

status_enum! {
    /// Where a command run in a devbox is.
    ExecutionStatus {
        Queued => "queued",
        Running => "running",
        Completed => "completed",
    }
}

/// `{"status": "ok"}`: the server and its database answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// One Server-Sent Event of a stream (`text/event-stream`).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // Documents the event stream; events are built by axum's `Event`.
pub struct SseEvent {
    /// The event's name, where the stream names them (`log`, `end`).
    pub event: Option<String>,
    /// The event's data: JSON text (see the operation's description).
    pub data: String,
    /// The event's id (a log line's sequence number), where given.
    pub id: Option<String>,
    pub retry: Option<u64>,
}

/// An empty JSON object, `{}`.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Empty {}

// ---------------------------------------------------------------- functions and invocations

/// How a run failed (as recorded for `failure` and `canceled` invocations).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // Documents the stored JSON; never built in Rust.
pub struct InvocationError {
    /// The exception's class name, or a platform reason (`ProcessExited`, `Canceled`, …).
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub traceback: Option<String>,
}

/// An invocation as every endpoint returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvocationView {
    pub id: String,
    pub project_name: String,
    pub function_name: String,
    pub deployment_id: String,
    pub status: InvocationStatus,
    /// The request as the caller sent it.
    #[schema(value_type = Object)]
    pub request: Value,
    /// The function's return value (any JSON), once it has succeeded.
    #[schema(value_type = Option<Value>)]
    pub result: Option<Value>,
    #[schema(value_type = Option<InvocationError>)]
    pub error: Option<Value>,
    /// The run that made this call through its coordinator, if any.
    pub parent_invocation_id: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
}

impl InvocationView {
    pub fn of(inv: &Invocation) -> ApiResult<Self> {
        let parse = |s: &Option<String>| {
            s.as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
        };
        Ok(InvocationView {
            id: inv.id.clone(),
            project_name: inv.project_name.clone(),
            function_name: inv.function_name.clone(),
            deployment_id: inv.deployment_id.clone(),
            status: InvocationStatus::parse(&inv.status)?,
            request: serde_json::from_str::<Value>(&inv.request).unwrap_or(Value::Null),
            result: parse(&inv.result),
            error: parse(&inv.error),
            parent_invocation_id: inv.parent_invocation_id.clone(),
            created_at_ms: inv.created_at_ms,
            started_at_ms: inv.started_at_ms,
            ended_at_ms: inv.ended_at_ms,
        })
    }
}

/// A page of invocations, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvocationList {
    pub invocations: Vec<InvocationView>,
    /// More follow: ask again with `starting_after` set to the last id.
    pub has_more: bool,
}

/// A deployed function with the JSON Schemas of its request and response.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionInfo {
    pub project_name: String,
    pub name: String,
    pub deployment_id: String,
    pub is_async: bool,
    #[schema(value_type = Object)]
    pub request_schema: Value,
    /// The function's return type (any JSON Schema; `true`/`{}` when it has none).
    #[schema(value_type = Value)]
    pub response_schema: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionList {
    pub functions: Vec<FunctionInfo>,
}

/// A page of an invocation's logs.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvocationLogs {
    pub invocation_id: String,
    pub status: InvocationStatus,
    pub logs: Vec<InvocationLog>,
    /// Ask again with `after_seq` set to this for what follows.
    pub next_seq: i64,
    pub has_more: bool,
}

// ---------------------------------------------------------------- deployments

/// A deployment and its build's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentView {
    pub id: String,
    pub project_name: String,
    pub source: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub status: DeploymentStatus,
    pub failure_reason: Option<String>,
    /// The functions the build found (once deployed).
    pub functions: Option<Vec<String>>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
}

impl DeploymentView {
    pub fn of(d: &Deployment) -> ApiResult<Self> {
        let manifest: Option<Value> = d
            .manifest
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok());
        let functions = manifest
            .as_ref()
            .and_then(|m| m["functions"].as_array().cloned())
            .map(|fs| {
                fs.iter()
                    .filter_map(|f| f["name"].as_str().map(str::to_string))
                    .collect()
            });
        Ok(DeploymentView {
            id: d.id.clone(),
            project_name: d.project_name.clone(),
            source: d.source.clone(),
            git_ref: d.git_ref.clone(),
            status: DeploymentStatus::parse(&d.status)?,
            failure_reason: d.failure_reason.clone(),
            functions,
            created_at_ms: d.created_at_ms,
            started_at_ms: d.started_at_ms,
            ended_at_ms: d.ended_at_ms,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentView>,
}

/// A deployment's build log.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentLogs {
    pub deployment_id: String,
    pub status: DeploymentStatus,
    pub failure_reason: Option<String>,
    pub logs: Vec<LogLine>,
}

// ---------------------------------------------------------------- keys

/// A new API key: `secret` is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<ApiKey>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedKey {
    /// The id of the key revoked.
    pub revoked: String,
}

// ---------------------------------------------------------------- devboxes

/// One entry of a devbox's status history.
#[derive(Debug, Serialize, ToSchema)]
pub struct StateTransition {
    pub status: DevboxStatus,
    pub transition_time_ms: i64,
    pub failure_reason: Option<String>,
}

/// Runloop's `DevboxView`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevboxView {
    pub id: String,
    pub name: Option<String>,
    pub status: DevboxStatus,
    pub create_time_ms: i64,
    pub end_time_ms: Option<i64>,
    /// `out_of_memory`, `out_of_disk`, `execution_failed` or `health_check_failed`.
    pub failure_reason: Option<String>,
    /// `api_shutdown`, `keep_alive_timeout`, `entrypoint_exit`, `idle` or `ttl_expired`.
    pub shutdown_reason: Option<String>,
    pub status_message: Option<String>,
    pub state_transitions: Vec<StateTransition>,
    /// Always `api`.
    pub initiator_type: &'static str,
    /// The invocation that created the devbox, if a run did.
    pub initiator_id: Option<String>,
    /// The launch parameters as given at creation.
    #[schema(value_type = Object)]
    pub launch_parameters: Value,
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub metadata: Value,
    /// `none` or `outbound`.
    #[schema(value_type = String)]
    pub network: Value,
    /// The devbox's tunnel, while it has one (`enable_tunnel`, or `tunnel` at creation).
    pub tunnel: Option<TunnelView>,
    pub capabilities: Vec<String>,
    /// The blueprint the devbox was started from, if any.
    pub blueprint_id: Option<String>,
    /// The disk snapshot the devbox was started from, if any.
    pub snapshot_id: Option<String>,
}

impl DevboxView {
    pub fn of(r: &DevboxRecord, transitions: &[Transition]) -> ApiResult<Self> {
        let spec: Value = serde_json::from_str(&r.spec).unwrap_or(Value::Null);
        let field = |name: &str, default: Value| spec.get(name).cloned().unwrap_or(default);
        Ok(DevboxView {
            id: r.id.clone(),
            name: r.name.clone(),
            status: DevboxStatus::parse(&r.status)?,
            create_time_ms: r.created_at_ms,
            end_time_ms: r.ended_at_ms,
            failure_reason: r.failure_reason.clone(),
            shutdown_reason: r.shutdown_reason.clone(),
            status_message: r.status_message.clone(),
            state_transitions: transitions
                .iter()
                .map(|t| {
                    Ok(StateTransition {
                        status: DevboxStatus::parse(&t.status)?,
                        transition_time_ms: t.transition_time_ms,
                        failure_reason: t.failure_reason.clone(),
                    })
                })
                .collect::<ApiResult<_>>()?,
            initiator_type: "api",
            initiator_id: r.invocation_id.clone(),
            launch_parameters: field("launch_parameters", Value::Object(Default::default())),
            metadata: field("metadata", Value::Object(Default::default())),
            network: field("network", Value::String("none".into())),
            tunnel: None,
            capabilities: Vec::new(),
            blueprint_id: r.blueprint_id.clone(),
            snapshot_id: r.snapshot_id.clone(),
        })
    }
}

/// A page of devboxes, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevboxList {
    pub devboxes: Vec<DevboxView>,
    /// More follow: ask again with `starting_after` set to the last id.
    pub has_more: bool,
    /// 1 when more follow, else 0 (Runloop's field; the exact count is not computed).
    pub remaining_count: i64,
}

/// Runloop's `DevboxAsyncExecutionDetailView`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionView {
    pub devbox_id: String,
    pub execution_id: String,
    pub status: ExecutionStatus,
    /// The shell's exit code once completed (128 + n for a signal n).
    pub exit_status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Output past the kept limits was dropped.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// Runloop's `DevboxExecutionDetailView`: a finished command (also the answer of file writes
/// and deletes, with exit status 0).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionResult {
    pub devbox_id: String,
    pub exit_status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// The multipart form of `upload_file`: the `path` field, then the `file` part.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Documents the form; read as a stream in the handler.
pub struct UploadForm {
    /// Where in the devbox to write the file (sent before `file`).
    pub path: String,
    #[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
    pub file: Vec<u8>,
}

/// Runloop's `TunnelView`: HTTP to a port inside the devbox at
/// `http(s)://{port}-{tunnel_key}.tunnel.{tunnel domain}` (the server's `--tunnel-domain`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TunnelView {
    pub auth_mode: TunnelAuthMode,
    pub create_time_ms: i64,
    /// Requests through the tunnel count as activity for the devbox's idle timer.
    pub http_keep_alive: bool,
    /// Random and unguessable (128 bits); names the tunnel in its host name.
    pub tunnel_key: String,
    /// Always false: Openloop does not resume devboxes on HTTP traffic.
    pub wake_on_http: bool,
    /// With `authenticated`: send `X-Runloop-Tunnel-Authorization: Bearer {auth_token}`.
    pub auth_token: Option<String>,
}

/// Runloop's `DevboxResourceUsageView`, plus what Openloop measured (`*_used`/`*_bytes`; for a
/// stopped devbox, as it stopped).
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceUsageView {
    pub id: String,
    pub status: DevboxStatus,
    pub start_time_ms: i64,
    pub end_time_ms: Option<i64>,
    /// Seconds from creation to now (or to its end).
    pub total_elapsed_seconds: i64,
    /// Seconds the devbox was up (not suspended).
    pub total_active_seconds: i64,
    /// Active seconds times the devbox's CPU cores.
    pub vcpu_seconds: i64,
    /// Active seconds times its memory limit in GiB.
    pub memory_gb_seconds: i64,
    /// Elapsed seconds times its disk size in GiB.
    pub disk_gb_seconds: i64,
    /// CPU time its processes used, in seconds (from its cgroup).
    pub cpu_seconds_used: Option<f64>,
    /// Memory in use now, in bytes (null once it has stopped).
    pub memory_used_bytes: Option<u64>,
    /// The most memory in use at once, in bytes.
    pub memory_peak_bytes: Option<u64>,
    /// Bytes used on its own disk.
    pub disk_used_bytes: Option<u64>,
    /// Its disk's size in bytes.
    pub disk_size_bytes: u64,
    /// Its CPU cores and memory limit.
    pub vcpus: f64,
    pub memory_limit_bytes: u64,
}

/// Runloop's `DevboxSendStdInResult`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SendStdinResult {
    pub devbox_id: String,
    pub execution_id: String,
    pub success: bool,
}
