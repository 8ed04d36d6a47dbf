//! A snapshot's name, commit message and metadata: the body that sets them, its limits, and
//! replacing them on a snapshot.

use super::*;
use crate::model::DevboxSnapshotView;

/// Longest snapshot name, in characters.
const MAX_NAME: usize = 256;
/// Longest commit message, in characters (Runloop's limit).
const MAX_COMMIT_MESSAGE: usize = 1000;
/// Most metadata entries on one snapshot.
const MAX_METADATA: usize = 100;

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
    pub(super) fn check(&self) -> ApiResult<()> {
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

impl Devboxes {
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
}
