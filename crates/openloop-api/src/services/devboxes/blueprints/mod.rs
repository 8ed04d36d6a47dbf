//! Blueprints (Runloop's `blueprints.*`): a Dockerfile plus `system_setup_commands`, built
//! once into a read-only layer that devboxes started from the blueprint stack under their
//! own, like a snapshot's.
//!
//! - here: the blueprint methods, and devboxes' use of blueprints;
//! - `plan`: the create body checked into a build plan, and its content hash;
//! - [`dockerfile`]: parsing the Dockerfile into steps;
//! - `build`: the build task (a build sandbox of `openloop_sandbox::build`, its log,
//!   capturing the layer); `steps`: running the plan's steps in it.
//!
//! A blueprint belongs to the API key that created it (others get 404; a run cannot create
//! one). Its layer is `<data>/blueprints/<content hash>`, the hash of everything that goes
//! into it (the owner, the parent's layer, the steps, context files, build arguments), so an
//! identical blueprint reuses the layer instead of building again. The parent's files are
//! merged into a child's layer (as a snapshot of a devbox from a snapshot is), so every
//! layer stands alone and deleting a parent never breaks a child. A blueprint that devboxes
//! still use cannot be deleted (409), under the same gate as snapshots.

mod build;
pub mod dockerfile;
mod plan;
mod steps;

use super::*;
use crate::model::{
    BlueprintBuildLogsListView, BlueprintListView, BlueprintPreviewView, BlueprintState,
    BlueprintStatus, BlueprintView,
};
use dockerfile::ImageConfig;
use openloop_store::blueprints::{BlueprintFilter, BlueprintRecord};
use plan::{bad, join_path, Plan};

pub(super) use build::Builds;
pub use plan::CreateBlueprint;
/// Default and largest page of `GET /v1/blueprints` (Runloop's).
const DEFAULT_PAGE: u64 = 20;
const MAX_PAGE: u64 = 5000;
/// Most builds of one API key queued or building at once.
const MAX_UNFINISHED_BUILDS: i64 = 16;

/// Runloop's `blueprints.list` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BlueprintListQuery {
    /// Only blueprints with this name.
    pub name: Option<String>,
    /// Only blueprints with this build status.
    pub status: Option<String>,
    /// `true` (default) or `false`: whether to count every match (`total_count`).
    pub include_total_count: Option<String>,
    /// Page size, 1 to 5000 (default 20); a whole number (`10.0` is 10).
    #[param(value_type = Option<f64>, minimum = 0, maximum = 1e9, multiple_of = 1)]
    pub limit: Option<crate::numbers::Number>,
    /// The last id of the previous page.
    pub starting_after: Option<String>,
}

/// Who a blueprint belongs to, as stored.
fn owner_of(principal: &Principal) -> ApiResult<String> {
    principal.require_key().map_err(|_| {
        ApiError::Forbidden(
            "blueprints belong to API keys; a run cannot create or use one (it would be lost with the run)".into(),
        )
    })?;
    Ok(super::snapshots::owner_tag(principal))
}

impl Devboxes {
    /// Where blueprint layers live.
    fn blueprints_dir(&self) -> PathBuf {
        self.config.data_dir.join("blueprints")
    }

    /// The layer (directory) of content hash `hash`.
    pub(super) fn blueprint_layer(&self, hash: &str) -> PathBuf {
        self.blueprints_dir().join(hash)
    }
    /// `POST /v1/blueprints`: record the blueprint and start its build (a task of its own).
    pub async fn create_blueprint(
        self: &Arc<Self>,
        req: CreateBlueprint,
        principal: &Principal,
    ) -> ApiResult<BlueprintView> {
        let owner = owner_of(principal)?;
        // The parent cannot be deleted between its check and the record naming it.
        let gate = self.snapshot_gate.read().await;
        let plan = self.plan(&req, &owner).await?;
        let egress = match req.network_policy_id.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => Some(self.network_policies.resolve(p).await?),
            None => None,
        };
        let secret_names = req.secrets.clone().unwrap_or_default();
        let secrets = self.secrets.resolve_for(principal, &secret_names).await?;
        let hash = Self::content_hash(&plan, &owner, &secret_names)?;
        // Queued builds are records and tasks: a key cannot pile them up without bound.
        let unfinished = self.store.unfinished_blueprints(&owner).await?;
        if unfinished >= MAX_UNFINISHED_BUILDS {
            return Err(ApiError::QuotaExceeded(format!(
                "{unfinished} blueprints of this key are still queued or building (at most {MAX_UNFINISHED_BUILDS}); wait for some to finish"
            )));
        }
        let parameters =
            serde_json::to_string(&req).map_err(|e| ApiError::Internal(e.to_string()))?;
        let record = BlueprintRecord {
            id: openloop_store::new_id("bpt"),
            owner: owner.clone(),
            name: req.name.clone(),
            parameters,
            base_blueprint_id: plan.parent.as_ref().map(|p| p.id.clone()),
            content_hash: hash,
            status: BlueprintStatus::Queued.as_str().into(),
            state: BlueprintState::Created.as_str().into(),
            failure_reason: None,
            image: serde_json::to_string(&plan.image)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
            metadata: serde_json::to_string(&req.metadata.clone().unwrap_or_default())
                .map_err(|e| ApiError::Internal(e.to_string()))?,
            created_at_ms: now_ms(),
            build_finish_time_ms: None,
        };
        self.store.insert_blueprint(&record).await?;
        drop(gate);
        let view = BlueprintView::of(&record)?;
        let this = Arc::clone(self);
        tokio::spawn(async move { this.build_blueprint(record, plan, egress, secrets).await });
        Ok(view)
    }

    /// `POST /v1/blueprints/preview`: the Dockerfile a create would build, checked.
    pub async fn preview_blueprint(
        &self,
        req: CreateBlueprint,
        principal: &Principal,
    ) -> ApiResult<BlueprintPreviewView> {
        let owner = owner_of(principal)?;
        Ok(BlueprintPreviewView {
            dockerfile: self.plan(&req, &owner).await?.rendered(),
        })
    }

    /// `GET /v1/blueprints/{id}`.
    pub async fn get_blueprint(&self, id: &str, principal: &Principal) -> ApiResult<BlueprintView> {
        BlueprintView::of(&self.store.get_blueprint(id, &owner_of(principal)?).await?)
    }

    /// `GET /v1/blueprints/{id}/logs`: the build log so far.
    pub async fn blueprint_logs(
        &self,
        id: &str,
        principal: &Principal,
    ) -> ApiResult<BlueprintBuildLogsListView> {
        let rec = self.store.get_blueprint(id, &owner_of(principal)?).await?;
        Ok(BlueprintBuildLogsListView {
            blueprint_id: rec.id.clone(),
            logs: self
                .store
                .blueprint_logs(&rec.id)
                .await?
                .into_iter()
                .map(Into::into)
                .collect(),
        })
    }

    /// `GET /v1/blueprints`: the caller's blueprints, newest first.
    pub async fn list_blueprints(
        &self,
        principal: &Principal,
        q: &BlueprintListQuery,
    ) -> ApiResult<BlueprintListView> {
        let owner = owner_of(principal)?;
        let limit = crate::numbers::whole("limit", q.limit.as_ref(), 0..=1_000_000_000)?
            .unwrap_or(DEFAULT_PAGE)
            .clamp(1, MAX_PAGE) as usize;
        let include_total = match q.include_total_count.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(bad(format!(
                    "`include_total_count` must be true or false, not {other}"
                )))
            }
        };
        if let Some(s) = q.status.as_deref().filter(|s| !s.is_empty()) {
            BlueprintStatus::parse(s).map_err(|_| {
                bad(format!(
                    "`status` must be queued, building, build_complete or failed, not {s}"
                ))
            })?;
        }
        let filter = BlueprintFilter {
            name: q.name.as_deref().filter(|n| !n.is_empty()),
            status: q.status.as_deref().filter(|s| !s.is_empty()),
            starting_after: q.starting_after.as_deref().filter(|s| !s.is_empty()),
        };
        let mut rows = self
            .store
            .list_blueprints(&owner, &filter, limit as i64 + 1)
            .await?;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let total_count = match include_total {
            true => Some(self.store.count_blueprints(&owner, &filter).await?),
            false => None,
        };
        Ok(BlueprintListView {
            blueprints: rows
                .iter()
                .map(BlueprintView::of)
                .collect::<ApiResult<_>>()?,
            has_more,
            total_count,
        })
    }

    /// `POST /v1/blueprints/{id}/delete`: refused (409) while it builds or devboxes use it.
    /// Its layer goes with the last blueprint of that content.
    pub async fn delete_blueprint(
        &self,
        id: &str,
        principal: &Principal,
    ) -> ApiResult<BlueprintView> {
        let owner = owner_of(principal)?;
        let _no_new_users = self.snapshot_gate.write().await;
        let rec = self.store.get_blueprint(id, &owner).await?;
        if rec.state == "deleted" {
            return Err(ApiError::NotFound(format!(
                "blueprint '{id}' was already deleted"
            )));
        }
        if matches!(rec.status.as_str(), "queued" | "building") {
            return Err(ApiError::Conflict(format!(
                "blueprint {id} is still building; delete it once its status is build_complete or failed"
            )));
        }
        let children = self.store.builds_from_blueprint(id).await?;
        if children > 0 {
            return Err(ApiError::Conflict(format!(
                "blueprint {id} is the base of {children} build(s) still running; delete it once they end"
            )));
        }
        let users = self.store.devboxes_using_blueprint(id).await?;
        if users > 0 {
            return Err(ApiError::Conflict(format!(
                "blueprint {id} is in use by {users} devbox(es) started from it (running or suspended); shut them down first, then delete it"
            )));
        }
        // An identical build waiting for this layer holds the content's lock meanwhile.
        let content = self.builds.content_lock(&rec.content_hash);
        let _content = content.lock().await;
        if !self.store.mark_blueprint_deleted(id, &owner).await? {
            return Err(ApiError::Conflict(format!(
                "blueprint {id} changed meanwhile; try again"
            )));
        }
        if self.store.blueprint_layer_users(&rec.content_hash).await? == 0 {
            let layer = self.blueprint_layer(&rec.content_hash);
            let removed =
                tokio::task::spawn_blocking(move || openloop_sandbox::snapshot::remove(&layer))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
            if let Err(e) = removed {
                tracing::warn!(blueprint = %id, error = %e, "could not remove a deleted blueprint's layer");
            }
        }
        BlueprintView::of(&self.store.get_blueprint(id, &owner).await?)
    }

    /// The blueprint a devbox create names (`blueprint_id` or `blueprint_name`), built and
    /// the caller's; 404 if it is not theirs, 409 if it is not built.
    pub(super) async fn blueprint_for_devbox(
        &self,
        req: &CreateDevbox,
        principal: &Principal,
    ) -> ApiResult<Option<(BlueprintRecord, ImageConfig)>> {
        let wanted = match (&req.blueprint_id, &req.blueprint_name) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(bad("give one of blueprint_id and blueprint_name, not both"))
            }
            (Some(id), None) => id,
            (None, Some(name)) => name,
        };
        if req.snapshot_id.is_some() {
            return Err(bad(
                "a devbox starts from a blueprint or a snapshot, not both",
            ));
        }
        let owner = owner_of(principal)?;
        let rec = match &req.blueprint_id {
            Some(id) => Some(self.store.get_blueprint(id, &owner).await?),
            None => self.store.latest_built_blueprint(wanted, &owner).await?,
        };
        let rec = match rec {
            Some(r) if r.state == "created" => r,
            _ => {
                return Err(ApiError::NotFound(format!(
                    "blueprint '{wanted}' not found"
                )))
            }
        };
        if rec.status != "build_complete" {
            return Err(ApiError::Conflict(format!(
                "blueprint {} is {}; a devbox starts only from a built blueprint (status build_complete)",
                rec.id, rec.status
            )));
        }
        let image = serde_json::from_str(&rec.image)
            .map_err(|e| ApiError::Internal(format!("blueprint {}: {e}", rec.id)))?;
        Ok(Some((rec, image)))
    }

    /// The read-only layer a devbox record starts from (its snapshot's or its blueprint's).
    pub(super) async fn lower_layer_of(&self, rec: &DevboxRecord) -> ApiResult<Option<PathBuf>> {
        if let Some(s) = &rec.snapshot_id {
            return Ok(Some(self.snapshot_layer(s)));
        }
        let Some(b) = &rec.blueprint_id else {
            return Ok(None);
        };
        let owner = rec
            .key_id
            .as_deref()
            .map(|k| format!("key:{k}"))
            .unwrap_or_default();
        let bp = self.store.get_blueprint(b, &owner).await?;
        Ok(Some(self.blueprint_layer(&bp.content_hash)))
    }
}
