//! Taking a disk snapshot: the record made in progress, then a running or suspended
//! devbox's disk copied into the snapshot's layer in a task of its own, and how that ended.

use super::*;
use crate::model::{DevboxSnapshotView, SnapshotStatus};
use openloop_store::snapshots::SnapshotRecord;

impl Devboxes {
    /// Snapshot a running or suspended devbox's disk: `wait` answers once the copy is done
    /// (`snapshot_disk`), else at once with the snapshot in progress (`snapshot_disk_async`).
    /// The copy runs in a task of its own either way.
    pub async fn snapshot_disk(
        self: &Arc<Self>,
        devbox_id: &str,
        principal: &Principal,
        req: SnapshotRequest,
        wait: bool,
    ) -> ApiResult<DevboxSnapshotView> {
        principal.require_key().map_err(|_| {
            ApiError::Forbidden(
                "disk snapshots belong to API keys; a run cannot take one (it would be lost with the run)".into(),
            )
        })?;
        req.check()?;
        let rec = self.authorized(devbox_id, principal).await?;
        if !matches!(rec.status.as_str(), "running" | "suspended") {
            return Err(ApiError::Conflict(format!(
                "devbox {devbox_id} is {}; only a running or suspended devbox's disk can be snapshotted",
                rec.status
            )));
        }
        let owner = owner_tag(principal);
        let snap = SnapshotRecord {
            id: openloop_store::new_id("snp"),
            owner: owner.clone(),
            source_devbox_id: devbox_id.to_string(),
            name: req.name,
            commit_message: req.commit_message,
            metadata: serde_json::to_string(&req.metadata.unwrap_or_default())
                .map_err(|e| ApiError::Internal(e.to_string()))?,
            status: SnapshotStatus::InProgress.as_str().into(),
            error_message: None,
            size_bytes: None,
            created_at_ms: now_ms(),
        };
        self.store.insert_snapshot(&snap).await?;
        let this = Arc::clone(self);
        let (snap_id, source) = (snap.id.clone(), devbox_id.to_string());
        let task = tokio::spawn(async move { this.take_snapshot(&snap_id, &source).await });
        if wait {
            task.await
                .map_err(|e| ApiError::Internal(format!("snapshot {}: {e}", snap.id)))??;
        }
        DevboxSnapshotView::of(&self.store.get_snapshot(&snap.id, &owner).await?)
    }

    /// Copy the disk and record how that ended.
    async fn take_snapshot(&self, snap_id: &str, devbox_id: &str) -> ApiResult<()> {
        let copied = self.copy_disk(snap_id, devbox_id).await;
        let recorded = match &copied {
            Ok(size) => {
                self.store
                    .finish_snapshot(snap_id, "complete", Some(*size as i64), None)
                    .await
            }
            Err(e) => {
                tracing::warn!(snapshot = %snap_id, devbox = %devbox_id, error = %e, "disk snapshot failed");
                let partial = self.snapshot_layer(snap_id);
                let _ = tokio::task::spawn_blocking(move || {
                    openloop_sandbox::snapshot::remove(&partial)
                })
                .await;
                self.store
                    .finish_snapshot(snap_id, "error", None, Some(&e.to_string()))
                    .await
            }
        };
        self.notifier.notify(snap_id);
        recorded?;
        copied.map(|_| ())
    }

    async fn copy_disk(&self, snap_id: &str, devbox_id: &str) -> ApiResult<u64> {
        let op = self.op_lock(devbox_id);
        let _one = op.lock().await;
        let rec = self.store.get_devbox(devbox_id).await?;
        // Only root enters the snapshots' directory (the layers are reached through overlays).
        let dir = self.snapshots_dir();
        async {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).await
        }
        .await
        .map_err(|e| ApiError::Internal(format!("preparing {}: {e}", dir.display())))?;
        let dest = self.snapshot_layer(snap_id);
        let copied = match rec.status.as_str() {
            "running" => {
                let live = lock(&self.live).get(devbox_id).cloned();
                let Some(live) = live.filter(|l| l.devbox.exit_reason().is_none()) else {
                    return Err(ApiError::Conflict(format!(
                        "devbox {devbox_id} stopped before its disk could be copied"
                    )));
                };
                self.touch(&live);
                live.devbox.snapshot_disk(dest).await
            }
            "suspended" => {
                let parent = self.lower_layer_of(&rec).await?;
                openloop_sandbox::snapshot::snapshot_suspended(
                    &self.config.devbox_dir().join(devbox_id),
                    parent,
                    dest,
                )
                .await
            }
            other => {
                return Err(ApiError::Conflict(format!(
                    "devbox {devbox_id} is {other}; only a running or suspended devbox's disk can be snapshotted"
                )))
            }
        };
        copied.map_err(|e| ApiError::Internal(format!("snapshot of devbox {devbox_id}: {e}")))
    }
}
