//! Blueprints (Runloop's `blueprints.*`): a Dockerfile plus `system_setup_commands`, built
//! once into a read-only layer that devboxes started from the blueprint stack under their
//! own, like a snapshot's.
//!
//! - here: the create body, checking it into a build [`Plan`], and the blueprint methods;
//! - [`dockerfile`]: parsing the Dockerfile into steps;
//! - `build`: the build task (a build sandbox of `openloop_sandbox::build`, its steps,
//!   its log, capturing the layer).
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

use super::*;
use crate::model::{
    BlueprintBuildLogsListView, BlueprintListView, BlueprintPreviewView, BlueprintState,
    BlueprintStatus, BlueprintView,
};
use dockerfile::{Dockerfile, ImageConfig, Step};
use openloop_store::blueprints::{BlueprintFilter, BlueprintRecord};
use sha2::Digest;

pub(super) use build::Builds;

/// Longest blueprint name, in characters.
const MAX_NAME: usize = 256;
/// Default and largest page of `GET /v1/blueprints` (Runloop's).
const DEFAULT_PAGE: u64 = 20;
const MAX_PAGE: u64 = 5000;

/// Runloop's blueprint create (and preview) body.
#[derive(Debug, Default, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CreateBlueprint {
    /// Required.
    #[serde(default)]
    pub name: String,
    /// Build on this blueprint of yours (instead of `FROM` in the Dockerfile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_blueprint_id: Option<String>,
    /// Build on the newest built blueprint of yours with this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_blueprint_name: Option<String>,
    /// Values of the Dockerfile's `ARG`s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_args: Option<BTreeMap<String, String>>,
    /// Not supported (an object of Runloop's object store): 400. Send the files as
    /// `file_mounts` with relative paths instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub build_context: Option<Value>,
    /// Not supported when non-empty: 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub code_mounts: Option<Vec<Value>>,
    /// `FROM openloop-base` or `FROM <blueprint>`, then RUN, ENV, ARG, WORKDIR, USER, COPY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// Path → contents. A relative path is a file of the build context (a `COPY` source);
    /// an absolute one is written at that path before the Dockerfile's steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mounts: Option<BTreeMap<String, String>>,
    /// The launch parameters of devboxes created from it without their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_parameters: Option<LaunchParameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// The network policy of the build's outbound traffic (the default egress rules
    /// otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy_id: Option<String>,
    /// Environment variable name → secret name, set for the build's commands only (their
    /// output in the log is redacted; the values are not part of the layer's identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<BTreeMap<String, String>>,
    /// Not supported when non-empty: 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub services: Option<Vec<Value>>,
    /// Commands run as root after the Dockerfile's steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_setup_commands: Option<Vec<String>>,
}

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

/// A checked create request: what the build task runs.
pub(super) struct Plan {
    /// The Dockerfile as given (or made of `base_blueprint_*`).
    text: String,
    pub(super) dockerfile: Dockerfile,
    /// The blueprint built on, if any.
    pub(super) parent: Option<BlueprintRecord>,
    /// Relative `file_mounts`: the build context.
    pub(super) context: BTreeMap<String, String>,
    /// Absolute `file_mounts`: written before the steps.
    pub(super) mounts: BTreeMap<String, String>,
    pub(super) setup: Vec<String>,
    pub(super) build_args: BTreeMap<String, String>,
    /// What a devbox from it starts with (the parent's, then this Dockerfile's).
    pub(super) image: ImageConfig,
}

impl Plan {
    /// The whole build as one Dockerfile: the given one, then the setup commands as `RUN`
    /// lines (as root: between `USER root` and the final user when it is not root).
    fn rendered(&self) -> String {
        let mut text = self.text.clone();
        if self.setup.is_empty() {
            return text;
        }
        let user = self
            .image
            .user
            .as_deref()
            .filter(|u| u.split(':').next() != Some("root"));
        if user.is_some() {
            text.push_str("USER root\n");
        }
        for cmd in &self.setup {
            text.push_str("RUN ");
            text.push_str(cmd);
            text.push('\n');
        }
        if let Some(u) = user {
            text.push_str("USER ");
            text.push_str(u);
            text.push('\n');
        }
        text
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

impl CreateBlueprint {
    /// The Dockerfile to build: the given one, or `FROM` the base blueprint or the base
    /// image (`system_setup_commands` are run after it, see [`Plan::rendered`]).
    fn dockerfile_text(&self) -> ApiResult<String> {
        let parent = match (&self.base_blueprint_id, &self.base_blueprint_name) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "give one of base_blueprint_id and base_blueprint_name, not both",
                ))
            }
            (Some(p), None) | (None, Some(p)) => Some(p.as_str()),
            (None, None) => None,
        };
        let mut text = match (&self.dockerfile, parent) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "a dockerfile names its parent in FROM: leave out base_blueprint_id/base_blueprint_name, or the dockerfile",
                ))
            }
            (Some(d), None) => d.clone(),
            (None, Some(p)) => format!("FROM {p}\n"),
            (None, None) => format!("FROM {}\n", dockerfile::BASE),
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        for cmd in self.system_setup_commands.iter().flatten() {
            if cmd.contains('\n') || cmd.trim().is_empty() {
                return Err(bad(format!(
                    "system_setup_commands: {cmd:?} is empty or spans lines; give one command per entry"
                )));
            }
        }
        Ok(text)
    }

    /// Everything that can be refused before a build, refused with a clear 400.
    fn check_fields(&self) -> ApiResult<()> {
        if self.name.trim().is_empty() {
            return Err(bad("`name` is required"));
        }
        if self.name.chars().count() > MAX_NAME {
            return Err(bad(format!("`name` is longer than {MAX_NAME} characters")));
        }
        if self.build_context.as_ref().is_some_and(|c| !c.is_null()) {
            return Err(bad(
                "build_context (an object of Runloop's object store) is not supported: Openloop has no object store; send the context's files as file_mounts with relative paths (COPY sources)",
            ));
        }
        if self.code_mounts.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(bad(
                "code_mounts are not supported in blueprints; COPY files from file_mounts, or clone in a RUN step",
            ));
        }
        if self.services.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(bad(
                "services (containerized services) are not supported: Openloop runs no containers in devboxes",
            ));
        }
        if let Some(m) = &self.metadata {
            if m.keys().any(|k| k.is_empty()) {
                return Err(bad("`metadata` keys must not be empty"));
            }
        }
        Ok(())
    }
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

/// `dir` joined with `path` (absolute paths stay), `.` and `..` resolved lexically.
pub(super) fn join_path(dir: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let full = match path.starts_with('/') {
        true => path.to_string(),
        false => format!("{dir}/{path}"),
    };
    for p in full.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
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

    /// A blueprint of the caller's by id, or its newest build by name (a `FROM` or
    /// `base_blueprint_*`, or a devbox's `blueprint_name`).
    async fn find_blueprint(
        &self,
        id_or_name: &str,
        owner: &str,
    ) -> ApiResult<Option<BlueprintRecord>> {
        if let Ok(r) = self.store.get_blueprint(id_or_name, owner).await {
            return Ok(Some(r));
        }
        Ok(self.store.latest_built_blueprint(id_or_name, owner).await?)
    }

    /// Check a create request into a [`Plan`] (400 for anything that cannot build).
    async fn plan(&self, req: &CreateBlueprint, owner: &str) -> ApiResult<Plan> {
        req.check_fields()?;
        let text = req.dockerfile_text()?;
        let dockerfile = dockerfile::parse(&text).map_err(bad)?;
        let parent = match &dockerfile.from {
            dockerfile::From::Base => None,
            dockerfile::From::Blueprint(name) => {
                let found = self.find_blueprint(name, owner).await?;
                match found {
                    Some(p) if p.state == "created" && p.status == "build_complete" => Some(p),
                    Some(p) if p.state == "created" => {
                        return Err(bad(format!(
                            "FROM `{name}`: blueprint {} is {}, not built; wait for build_complete",
                            p.id, p.status
                        )))
                    }
                    _ => {
                        return Err(bad(format!(
                            "FROM `{name}`: no built blueprint of yours has this name or id (use `FROM {}` for the base image)",
                            dockerfile::BASE
                        )))
                    }
                }
            }
        };
        let (mut context, mut mounts) = (BTreeMap::new(), BTreeMap::new());
        for (path, contents) in req.file_mounts.iter().flatten() {
            if path.contains('\0') || path.trim().is_empty() {
                return Err(bad(format!("file_mounts: `{path}` is not a valid path")));
            }
            if path.starts_with('/') {
                mounts.insert(join_path("/", path), contents.clone());
            } else {
                let key =
                    dockerfile::context_path(path).map_err(|e| bad(format!("file_mounts: {e}")))?;
                context.insert(key, contents.clone());
            }
        }
        let mut image = match &parent {
            Some(p) => serde_json::from_str(&p.image)
                .map_err(|e| ApiError::Internal(format!("blueprint {}: {e}", p.id)))?,
            None => ImageConfig::default(),
        };
        for step in &dockerfile.steps {
            match step {
                Step::Copy { sources, chown, .. } => {
                    for s in sources {
                        let prefix = format!("{s}/");
                        if !context
                            .keys()
                            .any(|k| k == s || s.is_empty() || k.starts_with(&prefix))
                        {
                            return Err(bad(format!(
                                "COPY source `{s}` is not in the build context (the relative keys of file_mounts)"
                            )));
                        }
                    }
                    if let Some(who) = chown {
                        dockerfile::is_root_user(who).map_err(bad)?;
                    }
                }
                Step::Env(pairs) => image.env.extend(pairs.iter().cloned()),
                Step::Workdir(dir) => {
                    let base = image.workdir.clone().unwrap_or_else(|| "/".into());
                    image.workdir = Some(join_path(&base, dir));
                }
                Step::User(who) => {
                    dockerfile::is_root_user(who).map_err(bad)?;
                    image.user = Some(who.clone());
                }
                Step::Run(_) | Step::Arg(..) => {}
            }
        }
        if let Some(who) = &image.user {
            if dockerfile::is_root_user(who).map_err(bad)? {
                return Err(bad(
                    "devboxes run as `user`: a Dockerfile may switch to `USER root` for its steps, but must end as `USER user` (or name no USER)",
                ));
            }
        }
        Ok(Plan {
            text,
            dockerfile,
            parent,
            context,
            mounts,
            setup: req.system_setup_commands.clone().unwrap_or_default(),
            build_args: req.build_args.clone().unwrap_or_default(),
            image,
        })
    }

    /// The hash naming the layer a plan builds: equal for identical content and owner.
    fn content_hash(
        plan: &Plan,
        owner: &str,
        secret_names: &BTreeMap<String, String>,
    ) -> ApiResult<String> {
        let identity = json!({
            "version": 1,
            "owner": owner,
            "image": image::IMAGE_NAME,
            "parent": plan.parent.as_ref().map(|p| &p.content_hash),
            "steps": plan.dockerfile.steps,
            "context": plan.context,
            "mounts": plan.mounts,
            "setup": plan.setup,
            "build_args": plan.build_args,
            "secrets": secret_names,
        });
        let bytes = serde_json::to_vec(&identity).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(hex::encode(sha2::Sha256::digest(&bytes)))
    }

    /// `POST /v1/blueprints`: record the blueprint and start its build (a task of its own).
    pub async fn create_blueprint(
        self: &Arc<Self>,
        req: CreateBlueprint,
        principal: &Principal,
    ) -> ApiResult<BlueprintView> {
        let owner = owner_of(principal)?;
        let plan = self.plan(&req, &owner).await?;
        let egress = match req.network_policy_id.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => Some(self.network_policies.resolve(p).await?),
            None => None,
        };
        let secret_names = req.secrets.clone().unwrap_or_default();
        let secrets = self.secrets.resolve_for(principal, &secret_names).await?;
        let hash = Self::content_hash(&plan, &owner, &secret_names)?;
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
