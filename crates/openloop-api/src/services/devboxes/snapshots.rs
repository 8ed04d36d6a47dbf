//! Disk snapshots of devboxes (Runloop's `snapshot_disk` and `disk_snapshots`), and devboxes
//! started from them.
//!
//! A snapshot is a devbox's writable layer copied once into `<data>/snapshots/<id>` (see
//! `openloop_sandbox::snapshot`), never written again: every devbox started from it stacks
//! it read-only under its own upper layer, so they share it copy-on-write. A snapshot belongs
//! to the API key that took it (a run cannot take one: nothing would own it once the run
//! ends); anyone else gets 404. A snapshot that devboxes
//! still use (any not shut down or failed, suspended ones included) cannot be deleted: 409
//! until they are shut down (`snapshot_gate` makes the check and a new devbox's record
//! exclusive, so none slips in between).

use super::*;
use crate::model::{
    DevboxSnapshotAsyncStatusView, DevboxSnapshotListView, DevboxSnapshotView, SnapshotStatus,
};
use openloop_store::snapshots::{SnapshotFilter, SnapshotRecord};

/// Longest snapshot name, in characters.
const MAX_NAME: usize = 256;
/// Longest commit message, in characters (Runloop's limit).
const MAX_COMMIT_MESSAGE: usize = 1000;
/// Most metadata entries on one snapshot.
const MAX_METADATA: usize = 100;
/// Default and largest page of `GET /v1/devboxes/disk_snapshots` (Runloop's).
const DEFAULT_PAGE: u64 = 20;
const MAX_PAGE: u64 = 5000;

/// Runloop's `snapshot_disk`, `snapshot_disk_async` and `disk_snapshots.update` body (every
/// field optional; an empty body is all defaults).
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
pub struct SnapshotRequest {
    /// A name of your choosing (at most 256 characters).
    #[serde(default)]
    pub name: Option<String>,
    /// At most 1000 characters.
    #[serde(default)]
    pub commit_message: Option<String>,
    /// String keys to string values (at most 100 entries). An update replaces it whole.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl SnapshotRequest {
    fn check(&self) -> ApiResult<()> {
        if self
            .name
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_NAME)
        {
            return Err(ApiError::BadRequest(format!(
                "`name` is longer than {MAX_NAME} characters"
            )));
        }
        if self
            .commit_message
            .as_ref()
            .is_some_and(|m| m.chars().count() > MAX_COMMIT_MESSAGE)
        {
            return Err(ApiError::BadRequest(format!(
                "`commit_message` is longer than {MAX_COMMIT_MESSAGE} characters"
            )));
        }
        if let Some(m) = &self.metadata {
            if m.len() > MAX_METADATA {
                return Err(ApiError::BadRequest(format!(
                    "`metadata` has {} entries; at most {MAX_METADATA} are allowed",
                    m.len()
                )));
            }
            if m.keys().any(|k| k.is_empty()) {
                return Err(ApiError::BadRequest(
                    "`metadata` keys must not be empty".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Runloop's `disk_snapshots.list` query. Metadata filters come as `metadata[<key>]=<value>`
/// (equal) and `metadata[<key>][in]=<v1>,<v2>` (one of), any number of each.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotListQuery {
    /// Only snapshots of this devbox.
    pub devbox_id: Option<String>,
    /// `true` (default) or `false`: whether to count every match (`total_count`).
    pub include_total_count: Option<String>,
    /// Page size, 1 to 5000 (default 20); a whole number (`10.0` is 10).
    #[param(value_type = Option<f64>, minimum = 0, maximum = 1e9, multiple_of = 1)]
    pub limit: Option<crate::numbers::Number>,
    /// The last id of the previous page.
    pub starting_after: Option<String>,
    /// Snapshots hold their blueprint's files and depend on none: any value matches no snapshot.
    pub source_blueprint_id: Option<String>,
}

/// One `metadata[...]` filter of a list query.
#[derive(Debug, PartialEq)]
enum MetadataFilter {
    Equals(String, String),
    OneOf(String, Vec<String>),
}

impl MetadataFilter {
    fn matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        match self {
            MetadataFilter::Equals(k, v) => metadata.get(k) == Some(v),
            MetadataFilter::OneOf(k, vs) => metadata.get(k).is_some_and(|v| vs.contains(v)),
        }
    }
}

/// The `metadata[...]` filters of a raw query string.
fn metadata_filters(raw: Option<&str>) -> ApiResult<Vec<MetadataFilter>> {
    let mut filters = Vec::new();
    for (name, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let Some(rest) = name.strip_prefix("metadata[") else {
            continue;
        };
        let bad = || {
            ApiError::BadRequest(format!(
                "query parameter `{name}`: metadata filters are `metadata[<key>]=<value>` or `metadata[<key>][in]=<v1>,<v2>`"
            ))
        };
        let (key, tail) = rest.split_once(']').ok_or_else(bad)?;
        if key.is_empty() {
            return Err(bad());
        }
        match tail {
            "" => filters.push(MetadataFilter::Equals(key.to_string(), value.into_owned())),
            "[in]" => filters.push(MetadataFilter::OneOf(
                key.to_string(),
                value.split(',').map(str::to_string).collect(),
            )),
            _ => return Err(bad()),
        }
    }
    Ok(filters)
}

/// Who a snapshot belongs to, as stored: `key:<id>` or `run:<id>`.
pub(super) fn owner_tag(principal: &Principal) -> String {
    match principal {
        Principal::Key { key_id } => format!("key:{key_id}"),
        Principal::Invocation { invocation_id } => format!("run:{invocation_id}"),
    }
}

fn metadata_of(r: &SnapshotRecord) -> BTreeMap<String, String> {
    serde_json::from_str(&r.metadata).unwrap_or_default()
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

    /// `POST /v1/devboxes/disk_snapshots/{id}`: replace name, commit message or metadata.
    pub async fn update_snapshot(
        &self,
        id: &str,
        principal: &Principal,
        req: SnapshotRequest,
    ) -> ApiResult<DevboxSnapshotView> {
        req.check()?;
        let owner = owner_tag(principal);
        let metadata = req
            .metadata
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        self.store
            .update_snapshot(
                id,
                &owner,
                req.name.as_deref(),
                req.commit_message.as_deref(),
                metadata.as_deref(),
            )
            .await?;
        DevboxSnapshotView::of(&self.store.get_snapshot(id, &owner).await?)
    }

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

    /// `GET /v1/devboxes/disk_snapshots`: the caller's snapshots, newest first.
    pub async fn list_snapshots(
        &self,
        principal: &Principal,
        q: &SnapshotListQuery,
        raw_query: Option<&str>,
    ) -> ApiResult<DevboxSnapshotListView> {
        let owner = owner_tag(principal);
        let limit = crate::numbers::whole("limit", q.limit.as_ref(), 0..=1_000_000_000)?
            .unwrap_or(DEFAULT_PAGE)
            .clamp(1, MAX_PAGE) as usize;
        let include_total = match q.include_total_count.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "`include_total_count` must be true or false, not {other}"
                )))
            }
        };
        let filters = metadata_filters(raw_query)?;
        if q.source_blueprint_id
            .as_deref()
            .is_some_and(|b| !b.is_empty())
        {
            return Ok(DevboxSnapshotListView {
                snapshots: Vec::new(),
                has_more: false,
                total_count: include_total.then_some(0),
            });
        }
        let devbox_id = q.devbox_id.as_deref().filter(|d| !d.is_empty());
        let (page, has_more, total) = if filters.is_empty() {
            let mut rows = self
                .store
                .list_snapshots(
                    &owner,
                    &SnapshotFilter {
                        devbox_id,
                        starting_after: q.starting_after.as_deref(),
                    },
                    limit as i64 + 1,
                )
                .await?;
            let has_more = rows.len() > limit;
            rows.truncate(limit);
            let total = match include_total {
                true => Some(self.store.count_snapshots(&owner, devbox_id).await?),
                false => None,
            };
            (rows, has_more, total)
        } else {
            // Metadata is a JSON document per snapshot: matched here, over the caller's
            // snapshots (of the devbox, when given), all of them for the total count.
            let all = self
                .store
                .list_snapshots(
                    &owner,
                    &SnapshotFilter {
                        devbox_id,
                        starting_after: None,
                    },
                    i64::MAX,
                )
                .await?;
            let matching: Vec<SnapshotRecord> = all
                .into_iter()
                .filter(|r| {
                    let m = metadata_of(r);
                    filters.iter().all(|f| f.matches(&m))
                })
                .collect();
            let total = include_total.then_some(matching.len() as i64);
            let mut rows: Vec<SnapshotRecord> = matching
                .into_iter()
                .filter(|r| {
                    q.starting_after
                        .as_deref()
                        .is_none_or(|after| r.id.as_str() < after)
                })
                .take(limit + 1)
                .collect();
            let has_more = rows.len() > limit;
            rows.truncate(limit);
            (rows, has_more, total)
        };
        Ok(DevboxSnapshotListView {
            snapshots: page
                .iter()
                .map(DevboxSnapshotView::of)
                .collect::<ApiResult<_>>()?,
            has_more,
            total_count: total,
        })
    }

    /// After a restart: snapshots being copied when the server stopped failed; their
    /// partial files, and the files of deleted snapshots, are removed.
    pub(super) async fn recover_snapshots(&self) -> ApiResult<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filters_parse() {
        let f = metadata_filters(Some(
            "limit=5&metadata%5Bteam%5D=a&metadata[env][in]=dev,prod&devbox_id=x",
        ))
        .unwrap();
        assert_eq!(
            f,
            vec![
                MetadataFilter::Equals("team".into(), "a".into()),
                MetadataFilter::OneOf("env".into(), vec!["dev".into(), "prod".into()]),
            ]
        );
        let m = BTreeMap::from([
            ("team".to_string(), "a".to_string()),
            ("env".to_string(), "prod".to_string()),
        ]);
        assert!(f.iter().all(|x| x.matches(&m)));
        let other = BTreeMap::from([("team".to_string(), "b".to_string())]);
        assert!(!f[0].matches(&other));
        assert!(metadata_filters(Some("metadata[]=x")).is_err());
        assert!(metadata_filters(Some("metadata[k][nope]=x")).is_err());
        assert!(metadata_filters(Some("metadata[k=x")).is_err());
    }
}
