//! A blueprint's create body checked into a build [`Plan`]: the Dockerfile parsed, its
//! parent found, its context files and `COPY` sources matched, what devboxes from it get,
//! and the hash of its content.

use super::dockerfile::{self, Dockerfile, ImageConfig, Step};
use super::*;
use sha2::Digest;

/// Longest blueprint name, in characters.
const MAX_NAME: usize = 256;
/// Runloop's blueprint create (and preview) body.
#[derive(Debug, Default, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CreateBlueprint {
    /// Required: 1 to 256 characters.
    #[schema(min_length = 1, max_length = 256)]
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

/// A checked create request: what the build task runs.
pub(in crate::services::devboxes) struct Plan {
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
    pub(super) fn rendered(&self) -> String {
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

pub(super) fn bad(message: impl Into<String>) -> ApiError {
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
        if self.name.contains('\0') {
            return Err(bad("`name` must not contain NUL"));
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

/// `dir` joined with `path` (absolute paths stay), `.` and `..` resolved lexically.
pub(in crate::services::devboxes) fn join_path(dir: &str, path: &str) -> String {
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
    /// A blueprint of the caller's by id, or its newest build by name (a `FROM` or
    /// `base_blueprint_*`, or a devbox's `blueprint_name`).
    pub(super) async fn find_blueprint(
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
    pub(super) async fn plan(&self, req: &CreateBlueprint, owner: &str) -> ApiResult<Plan> {
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
    pub(super) fn content_hash(
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
}
