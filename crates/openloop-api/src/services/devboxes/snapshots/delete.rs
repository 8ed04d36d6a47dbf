//! Removing disk snapshots: deleting one (refused while devboxes use it), and after a
//! restart, failing unfinished snapshots and removing the files of those not complete.

use super::*;
use crate::model::SnapshotStatus;

impl Devboxes {
    /// `POST /v1/devboxes/disk_snapshots/{id}/delete`: refused (409) while devboxes use it.
    pub async fn delete_snapshot(&self, id: &str, principal: &Principal) -> ApiResult<()> {
        let owner = owner_tag(principal);
        let _no_new_users = self.snapshot_gate.write().await;
        let snap = self.store.get_snapshot(id, &owner).await?;
        match SnapshotStatus::parse(&snap.status)? {
            SnapshotStatus::Deleted => {
                return Err(ApiError::NotFound(format!(
                    "disk snapshot '{id}' was already deleted"
                )))
            }
            SnapshotStatus::InProgress => {
                return Err(ApiError::Conflict(format!(
                    "disk snapshot {id} is still being taken; delete it once its status is complete or error"
                )))
            }
            SnapshotStatus::Complete | SnapshotStatus::Error => {}
        }
        let users = self.store.devboxes_using_snapshot(id).await?;
        if users > 0 {
            return Err(ApiError::Conflict(format!(
                "disk snapshot {id} is in use by {users} devbox(es) started from it (running or suspended); shut them down first, then delete it"
            )));
        }
        if !self.store.mark_snapshot_deleted(id, &owner).await? {
            return Err(ApiError::Conflict(format!(
                "disk snapshot {id} changed meanwhile; ask for its status and try again"
            )));
        }
        let layer = self.snapshot_layer(id);
        let removed =
            tokio::task::spawn_blocking(move || openloop_sandbox::snapshot::remove(&layer))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Err(e) = removed {
            // Recorded as deleted; the files go at the next start.
            tracing::warn!(snapshot = %id, error = %e, "could not remove a deleted snapshot's files");
        }
        Ok(())
    }

    /// After a restart: snapshots being copied when the server stopped failed; their
    /// partial files, and the files of deleted snapshots, are removed.
    pub(in crate::services::devboxes) async fn recover_snapshots(&self) -> ApiResult<()> {
        let failed = self
            .store
            .fail_unfinished_snapshots(
                "the server stopped while the snapshot was being taken; take it again",
            )
            .await?;
        if !failed.is_empty() {
            tracing::info!(
                count = failed.len(),
                "failed snapshots a stopped server left unfinished"
            );
        }
        let keep: std::collections::HashSet<String> = self
            .store
            .complete_snapshot_ids()
            .await?
            .into_iter()
            .collect();
        let dir = self.snapshots_dir();
        tokio::task::spawn_blocking(move || {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !keep.contains(&name) {
                    if let Err(err) = openloop_sandbox::snapshot::remove(&e.path()) {
                        tracing::warn!(path = %e.path().display(), error = %err, "could not remove stale snapshot files");
                    }
                }
            }
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
    }
}
