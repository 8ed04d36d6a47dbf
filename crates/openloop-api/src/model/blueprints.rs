//! Runloop's blueprint bodies (`/v1/blueprints`).

use crate::error::{ApiError, ApiResult};
use crate::model::status_enum;
use openloop_store::blueprints::{BlueprintLogLine, BlueprintRecord};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

status_enum! {
    /// Where a blueprint's build is: `queued` (waiting for a build slot, or for an identical
    /// build), `building`, then `build_complete` or `failed`.
    BlueprintStatus {
        Queued => "queued",
        Building => "building",
        BuildComplete => "build_complete",
        Failed => "failed",
    }
}

status_enum! {
    /// `created`, or `deleted` once deleted.
    BlueprintState {
        Created => "created",
        Deleted => "deleted",
    }
}

/// Runloop's `BlueprintView`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BlueprintView {
    pub id: String,
    pub name: String,
    pub create_time_ms: i64,
    /// The create request as given (Runloop's `BlueprintBuildParameters`).
    #[schema(value_type = Object)]
    pub parameters: Value,
    pub state: BlueprintState,
    pub status: BlueprintStatus,
    /// The blueprint it was built `FROM`, if any.
    pub base_blueprint_id: Option<String>,
    pub build_finish_time_ms: Option<i64>,
    /// `build_failed`, `out_of_memory` or `out_of_disk`, when `failed`.
    #[schema(pattern = "^(build_failed|out_of_memory|out_of_disk)$")]
    pub failure_reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Always empty (Openloop runs no containerized services).
    pub containerized_services: Vec<Value>,
    /// Always empty.
    pub devbox_capabilities: Vec<String>,
    /// Always false: blueprints belong to their API key.
    pub is_public: bool,
}

impl BlueprintView {
    pub fn of(r: &BlueprintRecord) -> ApiResult<Self> {
        let corrupt = |what: &str, e: serde_json::Error| {
            ApiError::Internal(format!("blueprint {} has corrupt stored {what}: {e}", r.id))
        };
        Ok(BlueprintView {
            id: r.id.clone(),
            name: r.name.clone(),
            create_time_ms: r.created_at_ms,
            parameters: serde_json::from_str(&r.parameters)
                .map_err(|e| corrupt("parameters", e))?,
            state: BlueprintState::parse(&r.state)?,
            status: BlueprintStatus::parse(&r.status)?,
            base_blueprint_id: r.base_blueprint_id.clone(),
            build_finish_time_ms: r.build_finish_time_ms,
            failure_reason: r.failure_reason.clone(),
            metadata: serde_json::from_str(&r.metadata).map_err(|e| corrupt("metadata", e))?,
            containerized_services: Vec::new(),
            devbox_capabilities: Vec::new(),
            is_public: false,
        })
    }
}

/// A page of blueprints, newest first (Runloop's `BlueprintListView`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BlueprintListView {
    pub blueprints: Vec<BlueprintView>,
    /// More follow: ask again with `starting_after` set to the last id.
    pub has_more: bool,
    /// How many match in all (null when `include_total_count=false`).
    pub total_count: Option<i64>,
}

/// One line of a build log (Runloop's `BlueprintBuildLog`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BlueprintBuildLog {
    /// `info` (the build's own lines and steps' output) or `error`.
    pub level: String,
    pub message: String,
    pub timestamp_ms: i64,
}

impl From<BlueprintLogLine> for BlueprintBuildLog {
    fn from(l: BlueprintLogLine) -> Self {
        BlueprintBuildLog {
            level: l.level,
            message: l.message,
            timestamp_ms: l.timestamp_ms,
        }
    }
}

/// A blueprint's build log so far (Runloop's `BlueprintBuildLogsListView`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BlueprintBuildLogsListView {
    pub blueprint_id: String,
    pub logs: Vec<BlueprintBuildLog>,
}

/// What a create request would build (Runloop's `BlueprintPreviewView`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BlueprintPreviewView {
    /// The Dockerfile that would be built, `system_setup_commands` as `RUN` lines.
    pub dockerfile: String,
}
