//! Disk snapshots of devboxes (Runloop's `snapshot_disk` and `disk_snapshots`), and devboxes
//! started from them.
//!
//! - here: who a snapshot belongs to, where its layer lives, and looking one up (its
//!   status; a complete one for a devbox to start from);
//! - `details`: the body that sets a snapshot's name, commit message and metadata, and
//!   replacing them;
//! - `take`: taking a snapshot (copying a running or suspended devbox's disk);
//! - `list`: listing the caller's snapshots, with metadata filters;
//! - `delete`: deleting a snapshot, and removing stale snapshot files after a restart.
//!
//! A snapshot is a devbox's writable layer copied once into `<data>/snapshots/<id>` (see
//! `openloop_sandbox::snapshot`), never written again: every devbox started from it stacks
//! it read-only under its own upper layer, so they share it copy-on-write. A snapshot belongs
//! to the API key that took it (a run cannot take one: nothing would own it once the run
//! ends); anyone else gets 404. A snapshot that devboxes
//! still use (any not shut down or failed, suspended ones included) cannot be deleted: 409
//! until they are shut down (`snapshot_gate` makes the check and a new devbox's record
//! exclusive, so none slips in between).

mod delete;
mod details;
mod list;
mod take;

pub use details::SnapshotRequest;
pub use list::SnapshotListQuery;

use super::*;
use crate::model::{DevboxSnapshotAsyncStatusView, DevboxSnapshotView, SnapshotStatus};

/// Who a snapshot belongs to, as stored: `key:<id>` or `run:<id>`.
pub(super) fn owner_tag(principal: &Principal) -> String {
    match principal {
        Principal::Key { key_id } => format!("key:{key_id}"),
        Principal::Invocation { invocation_id } => format!("run:{invocation_id}"),
    }
}

impl Devboxes {
    /// Where snapshots' files live.
    fn snapshots_dir(&self) -> PathBuf {
        self.config.data_dir.join("snapshots")
    }

    /// The layer (directory) of snapshot `id`.
    pub(super) fn snapshot_layer(&self, id: &str) -> PathBuf {
        self.snapshots_dir().join(id)
    }

    /// The layer of a complete snapshot `id` of the caller's, for a devbox to start from.
    pub(super) async fn usable_snapshot(
        &self,
        id: &str,
        principal: &Principal,
    ) -> ApiResult<PathBuf> {
        let snap = self.store.get_snapshot(id, &owner_tag(principal)).await?;
        match SnapshotStatus::parse(&snap.status)? {
            SnapshotStatus::Complete => Ok(self.snapshot_layer(id)),
            SnapshotStatus::InProgress => Err(ApiError::Conflict(format!(
                "disk snapshot {id} is still being taken; wait until its status (GET /v1/devboxes/disk_snapshots/{id}/status) is complete"
            ))),
            SnapshotStatus::Error => Err(ApiError::Conflict(format!(
                "disk snapshot {id} failed ({}); take a new one",
                snap.error_message.unwrap_or_default()
            ))),
            SnapshotStatus::Deleted => Err(ApiError::NotFound(format!(
                "disk snapshot '{id}' was deleted"
            ))),
        }
    }

    /// `GET /v1/devboxes/disk_snapshots/{id}/status`.
    pub async fn snapshot_status(
        &self,
        id: &str,
        principal: &Principal,
    ) -> ApiResult<DevboxSnapshotAsyncStatusView> {
        let snap = self.store.get_snapshot(id, &owner_tag(principal)).await?;
        let status = SnapshotStatus::parse(&snap.status)?;
        Ok(DevboxSnapshotAsyncStatusView {
            status,
            error_message: snap.error_message.clone(),
            snapshot: match status {
                SnapshotStatus::Complete => Some(DevboxSnapshotView::of(&snap)?),
                _ => None,
            },
        })
    }
}
