//! Runloop's disk snapshot bodies (`/v1/devboxes/{id}/snapshot_disk`,
//! `/v1/devboxes/disk_snapshots`).

use crate::error::ApiResult;
use crate::model::status_enum;
use openloop_store::snapshots::SnapshotRecord;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

status_enum! {
    /// Where a disk snapshot is: `in_progress` while its files are copied, then `complete`
    /// or `error`; `deleted` once deleted.
    SnapshotStatus {
        InProgress => "in_progress",
        Complete => "complete",
        Error => "error",
        Deleted => "deleted",
    }
}

/// Runloop's `DevboxSnapshotView`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevboxSnapshotView {
    pub id: String,
    pub create_time_ms: i64,
    pub metadata: BTreeMap<String, String>,
    pub source_devbox_id: String,
    pub name: Option<String>,
    pub commit_message: Option<String>,
    /// Bytes of the files the snapshot holds (the devbox's changes over the base image);
    /// null until the copy is complete.
    pub size_bytes: Option<i64>,
    /// Always null: a snapshot holds its blueprint's files and depends on no blueprint.
    #[schema(value_type = Option<String>)]
    pub source_blueprint_id: Option<()>,
}

impl DevboxSnapshotView {
    pub fn of(r: &SnapshotRecord) -> ApiResult<Self> {
        let metadata = serde_json::from_str(&r.metadata).map_err(|e| {
            crate::error::ApiError::Internal(format!(
                "disk snapshot {} has corrupt stored metadata: {e}",
                r.id
            ))
        })?;
        Ok(DevboxSnapshotView {
            id: r.id.clone(),
            create_time_ms: r.created_at_ms,
            metadata,
            source_devbox_id: r.source_devbox_id.clone(),
            name: r.name.clone(),
            commit_message: r.commit_message.clone(),
            size_bytes: r.size_bytes,
            source_blueprint_id: None,
        })
    }
}

/// Runloop's `DevboxSnapshotAsyncStatusView`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevboxSnapshotAsyncStatusView {
    pub status: SnapshotStatus,
    /// Why the snapshot failed, when `error`.
    pub error_message: Option<String>,
    /// The snapshot, once `complete`.
    pub snapshot: Option<DevboxSnapshotView>,
}

/// A page of disk snapshots, newest first (Runloop's `DevboxSnapshotListView`).
#[derive(Debug, Serialize, ToSchema)]
pub struct DevboxSnapshotListView {
    pub snapshots: Vec<DevboxSnapshotView>,
    /// More follow: ask again with `starting_after` set to the last id.
    pub has_more: bool,
    /// How many match in all (null when `include_total_count=false`).
    pub total_count: Option<i64>,
}
