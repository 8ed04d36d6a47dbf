//! What a devbox is asked for (Runloop's create body and launch parameters) and the size,
//! limits and network it gets.

use super::*;
use crate::numbers::{self, Number};

/// Runloop's launch parameters; Openloop applies these and echoes back any others.
#[derive(Debug, Default, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct LaunchParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_commands: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_size_request: Option<String>,
    /// GiB of memory, a whole number from 1 to 64 (`4.0` is 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>, minimum = 1, maximum = 64, multiple_of = 1)]
    pub custom_gb_memory: Option<Number>,
    /// CPU cores, 0.5 to 16, fractions allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>, minimum = 0.5, maximum = 16)]
    pub custom_cpu_cores: Option<Number>,
    /// GiB of disk, a whole number from 1 to 64 (`8.0` is 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>, minimum = 1, maximum = 64, multiple_of = 1)]
    pub custom_disk_size: Option<Number>,
    /// Seconds idle before the devbox shuts down, fractions allowed (at most 172800 is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1e9)]
    pub keep_alive_time_seconds: Option<Number>,
    /// What to do once idle this long (replaces `keep_alive_time_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_idle: Option<AfterIdle>,
    /// Runloop's lifecycle configuration; its `after_idle` is applied (it must equal the
    /// top-level `after_idle` when both are given), the rest is echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    /// Other Runloop launch parameters are accepted and echoed back.
    #[serde(flatten)]
    #[schema(ignore)]
    pub other: BTreeMap<String, Value>,
}

/// Runloop's `AfterIdle`: after `idle_time_seconds` without activity, `on_idle` happens.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct AfterIdle {
    /// Seconds, fractions allowed (at most 172800 is used).
    #[schema(value_type = f64, minimum = 0, maximum = 1e9)]
    pub idle_time_seconds: Number,
    pub on_idle: OnIdle,
}

/// What an idle devbox does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnIdle {
    /// Shut down (and lose its disk).
    #[default]
    Shutdown,
    /// Suspend: its processes end, its disk is kept until it is resumed.
    Suspend,
}

/// Runloop's `LifecycleConfiguration`.
#[derive(Debug, Default, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Lifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_idle: Option<AfterIdle>,
    /// Other fields are accepted and echoed back.
    #[serde(flatten)]
    #[schema(ignore)]
    pub other: BTreeMap<String, Value>,
}

/// Runloop's devbox create request (every field optional; an empty body is all defaults).
#[derive(Debug, Default, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CreateDevbox {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub environment_variables: Option<BTreeMap<String, String>>,
    /// Environment variable name → secret name (`/v1/secrets`), as Runloop's client sends it.
    #[serde(default)]
    pub secrets: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub entrypoint: Option<String>,
    #[serde(default)]
    pub launch_parameters: Option<LaunchParameters>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Path → contents of files written before the launch commands run.
    #[serde(default)]
    pub file_mounts: Option<BTreeMap<String, String>>,
    /// Openloop extension: `"none"` (default) or `"outbound"` (internet, never the host's loopback).
    #[serde(default)]
    #[schema(pattern = "^(none|outbound)$")]
    pub network: Option<String>,
    /// A disk snapshot (`POST /v1/devboxes/{id}/snapshot_disk`) of this caller's to start
    /// from: its files lie under the devbox's own, shared read-only with other devboxes.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// A built blueprint (`POST /v1/blueprints`) of this caller's to start from: its layer
    /// lies under the devbox's own, its ENV and WORKDIR apply.
    #[serde(default)]
    pub blueprint_id: Option<String>,
    /// The newest built blueprint of this caller's with this name.
    #[serde(default)]
    pub blueprint_name: Option<String>,
    /// A tunnel to enable once the devbox runs (see `enable_tunnel`).
    #[serde(default)]
    pub tunnel: Option<super::tunnels::TunnelConfig>,
}

/// Size, limits and network a devbox gets.
pub(super) struct Resources {
    pub(super) limits: Limits,
    pub(super) disk_bytes: u64,
    pub(super) network: bool,
    /// Where outbound traffic may go (`launch_parameters.network_policy_id`).
    pub(super) egress: Option<EgressPolicy>,
    pub(super) keep_alive: Duration,
    /// What happens once idle past `keep_alive`.
    pub(super) on_idle: OnIdle,
    /// Whether `keep_alive` came from `after_idle` (its shutdown reason is then `idle`).
    pub(super) after_idle: bool,
    /// Its user is root (of its own user namespace, like a blueprint build), not `user`.
    pub(super) root: bool,
}

/// Whether `launch_parameters.user_parameters` (Runloop's `{username, uid}`) asks for root:
/// a devbox's user is `user` (uid 1000, the default) or `root` (uid 0).
fn root_user(params: &LaunchParameters) -> ApiResult<bool> {
    let Some(u) = params.other.get("user_parameters").filter(|v| !v.is_null()) else {
        return Ok(false);
    };
    let name = u.get("username").and_then(Value::as_str);
    let uid = u.get("uid").and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
    });
    match (name, uid) {
        (Some("root"), Some(0)) => Ok(true),
        (Some("user"), Some(1000)) => Ok(false),
        _ => Err(ApiError::BadRequest(
            "launch_parameters.user_parameters: a devbox's user is {\"username\": \"user\", \"uid\": 1000} (the default) or {\"username\": \"root\", \"uid\": 0}".into(),
        )),
    }
}

impl Devboxes {
    pub(super) fn resources(&self, req: &CreateDevbox) -> ApiResult<Resources> {
        let params = req.launch_parameters.clone().unwrap_or_default();
        let (mut memory_gb, mut cpus, mut disk_gb) = (
            self.config.devbox_memory_mb as f64 / 1024.0,
            1.0,
            DEFAULT_DISK_GB,
        );
        if let Some(size) = &params.resource_size_request {
            (memory_gb, cpus, disk_gb) = match size.as_str() {
                "X_SMALL" => (1.0, 0.5, 4),
                "SMALL" => (2.0, 1.0, 4),
                "MEDIUM" => (4.0, 2.0, 8),
                "LARGE" => (8.0, 2.0, 16),
                "X_LARGE" => (16.0, 4.0, 32),
                "XX_LARGE" => (32.0, 8.0, 64),
                "CUSTOM_SIZE" => (memory_gb, cpus, disk_gb),
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "launch_parameters.resource_size_request: unknown size '{other}'; use X_SMALL, SMALL, MEDIUM, LARGE, X_LARGE, XX_LARGE or CUSTOM_SIZE"
                    )))
                }
            };
        }
        if let Some(gb) = numbers::whole(
            "launch_parameters.custom_gb_memory",
            params.custom_gb_memory.as_ref(),
            1..=64,
        )? {
            memory_gb = gb as f64;
        }
        if let Some(c) = numbers::real(
            "launch_parameters.custom_cpu_cores",
            params.custom_cpu_cores.as_ref(),
            0.5..=16.0,
        )? {
            cpus = c;
        }
        if let Some(d) = numbers::whole(
            "launch_parameters.custom_disk_size",
            params.custom_disk_size.as_ref(),
            1..=64,
        )? {
            disk_gb = d;
        }
        let network = match req.network.as_deref() {
            None | Some("none") => false,
            Some("outbound") => true,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "network: '{other}' is not 'none' or 'outbound'"
                )))
            }
        };
        let nested = params
            .lifecycle
            .as_ref()
            .and_then(|l| l.after_idle.as_ref());
        let after_idle = match (params.after_idle.as_ref(), nested) {
            (Some(a), Some(b))
                if a.on_idle != b.on_idle || a.idle_time_seconds != b.idle_time_seconds =>
            {
                return Err(ApiError::BadRequest(
                    "launch_parameters.after_idle and launch_parameters.lifecycle.after_idle differ; give one, or the same value in both".into(),
                ))
            }
            (Some(a), _) => Some(a),
            (None, b) => b,
        };
        let keep_alive = match after_idle {
            Some(a) => numbers::seconds(
                "launch_parameters.after_idle.idle_time_seconds",
                Some(&a.idle_time_seconds),
            )?,
            None => numbers::seconds(
                "launch_parameters.keep_alive_time_seconds",
                params.keep_alive_time_seconds.as_ref(),
            )?,
        }
        .unwrap_or(Duration::from_secs(self.config.devbox_idle_seconds))
        .min(Duration::from_secs(172_800));
        Ok(Resources {
            limits: Limits {
                memory_bytes: (memory_gb * 1024.0 * 1024.0 * 1024.0) as u64,
                pids: self.config.devbox_pids,
                cpu_shares: ((cpus * 1024.0) as u64).max(2),
            },
            disk_bytes: disk_gb << 30,
            network,
            egress: None,
            keep_alive,
            on_idle: after_idle.map(|a| a.on_idle).unwrap_or_default(),
            after_idle: after_idle.is_some(),
            root: root_user(&params)?,
        })
    }
}
