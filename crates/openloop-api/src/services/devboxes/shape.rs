//! What a devbox is asked for (Runloop's create body and launch parameters) and the size,
//! limits and network it gets.

use super::*;

/// Runloop's launch parameters; Openloop applies these and echoes back any others.
#[derive(Debug, Default, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct LaunchParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_commands: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_size_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_gb_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_cpu_cores: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_disk_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_time_seconds: Option<u64>,
    /// Other Runloop launch parameters are accepted and echoed back.
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
}

/// Size, limits and network a devbox gets.
pub(super) struct Resources {
    pub(super) limits: Limits,
    pub(super) disk_bytes: u64,
    pub(super) network: bool,
    /// Where outbound traffic may go (`launch_parameters.network_policy_id`).
    pub(super) egress: Option<EgressPolicy>,
    pub(super) keep_alive: Duration,
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
        if let Some(gb) = params.custom_gb_memory {
            if !(1..=64).contains(&gb) {
                return Err(ApiError::BadRequest(
                    "launch_parameters.custom_gb_memory must be 1 to 64".into(),
                ));
            }
            memory_gb = gb as f64;
        }
        if let Some(c) = params.custom_cpu_cores {
            if !(0.5..=16.0).contains(&c) {
                return Err(ApiError::BadRequest(
                    "launch_parameters.custom_cpu_cores must be 0.5 to 16".into(),
                ));
            }
            cpus = c;
        }
        if let Some(d) = params.custom_disk_size {
            if !(1..=64).contains(&d) {
                return Err(ApiError::BadRequest(
                    "launch_parameters.custom_disk_size must be 1 to 64 (GiB)".into(),
                ));
            }
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
        let keep_alive = params
            .keep_alive_time_seconds
            .unwrap_or(self.config.devbox_idle_seconds)
            .min(172_800);
        Ok(Resources {
            limits: Limits {
                memory_bytes: (memory_gb * 1024.0 * 1024.0 * 1024.0) as u64,
                pids: self.config.devbox_pids,
                cpu_shares: ((cpus * 1024.0) as u64).max(2),
            },
            disk_bytes: disk_gb << 30,
            network,
            egress: None,
            keep_alive: Duration::from_secs(keep_alive),
        })
    }
}
