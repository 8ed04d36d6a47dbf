//! The build pipeline: source → runloop.toml → environment → manifest.

use crate::venv::VenvSettings;
use crate::{manifest, source, venv, DeployError, LogSink, Manifest, RunloopToml};
use openloop_sandbox::cgroup::{Cgroup, Limits};
use openloop_sandbox::jail::{Network, FUNCTION_HOST_UID};
use openloop_sandbox::python::{PythonSandbox, APP};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct BuildSettings {
    pub venv: VenvSettings,
    pub sandbox: BuildSandbox,
}

/// The sandbox every step of a build that runs the project's or its packages' code runs in:
/// `uv` with its build hooks, and the module import. User code never runs unconfined on
/// the host.
#[derive(Debug, Clone)]
pub struct BuildSandbox {
    /// The `openloop` binary (the jail launcher).
    pub launcher: PathBuf,
    /// A private directory for what the build hands back (the manifest).
    pub scratch: PathBuf,
    /// The build's own cgroup and its limits.
    pub cgroup_name: String,
    pub limits: Limits,
    /// Size of the build's `/tmp`.
    pub tmp_bytes: u64,
    /// `cgroup.procs` of the build's cgroup, once created.
    procs: Vec<std::ffi::CString>,
}

impl BuildSandbox {
    pub fn new(launcher: PathBuf, scratch: PathBuf, cgroup_name: String, limits: Limits) -> Self {
        BuildSandbox {
            launcher,
            scratch,
            cgroup_name,
            limits,
            tmp_bytes: 1 << 30,
            procs: Vec::new(),
        }
    }

    /// A jail for one step: the system directories, `repo` as the working directory
    /// (writable while packages are installed: local packages are built in place), outbound
    /// network with the egress rules (packages are fetched), inside the build's cgroup.
    pub fn python(&self, repo: &Path, writable: bool) -> PythonSandbox {
        let mut sb = PythonSandbox::new(&self.launcher, self.tmp_bytes).bind(repo, APP, writable);
        // Packages are fetched over the same egress path as devboxes and function code.
        sb.network = Network::Outbound;
        sb.cgroup_procs = self.procs.clone();
        sb
    }

    /// Create `dir` (and its parents) owned by the sandbox's uid, so the jail can write it.
    pub fn owned_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::os::unix::fs::chown(dir, Some(FUNCTION_HOST_UID), Some(FUNCTION_HOST_UID))
    }
}

#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub manifest: Manifest,
}

/// Build `source` at `git_ref` into `dest` (the deployment's directory, created here), for
/// `project` (which owns the cached environment and package cache).
pub async fn build(
    settings: &BuildSettings,
    project: &str,
    source_spec: &str,
    git_ref: Option<&str>,
    dest: PathBuf,
    log: &LogSink,
) -> Result<BuildOutput, DeployError> {
    let cgroup = Cgroup::create(&settings.sandbox.cgroup_name, settings.sandbox.limits)?;
    let mut sandbox = settings.sandbox.clone();
    sandbox.procs = cgroup.procs_files();
    let result = build_in(settings, &sandbox, project, source_spec, git_ref, dest, log).await;
    // Whatever a build hook left running dies with the build.
    let _ = tokio::task::spawn_blocking(move || cgroup.destroy()).await;
    result
}

async fn build_in(
    settings: &BuildSettings,
    sandbox: &BuildSandbox,
    project: &str,
    source_spec: &str,
    git_ref: Option<&str>,
    dest: PathBuf,
    log: &LogSink,
) -> Result<BuildOutput, DeployError> {
    let repo = dest.join("src");
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::create_dir_all(&dest)?;
    source::fetch(source_spec, git_ref, &repo, log).await?;
    let toml = RunloopToml::load(&repo)?;
    let module = toml.module.clone();
    let _ = log.send(format!(
        "runloop.toml: module '{}' in {}",
        module.name, module.path
    ));
    if !toml.secrets.is_empty() {
        let given: Vec<String> = toml
            .secrets
            .iter()
            .map(|(var, name)| format!("{var} (secret '{name}')"))
            .collect();
        let _ = log.send(format!(
            "runloop.toml: runs get the secrets {}",
            given.join(", ")
        ));
    }
    if let Some(p) = &toml.network_policy {
        let _ = log.send(format!(
            "runloop.toml: function code runs under network policy '{p}'"
        ));
    }
    let requirements = match std::fs::read_to_string(repo.join("requirements.txt")) {
        Ok(r) => r,
        Err(_) => {
            return Err(DeployError::Config(
                "requirements.txt is missing at the repository root; add one (it may be empty)"
                    .into(),
            ))
        }
    };
    // The source belongs to the build's uid while the build runs (local packages are built
    // in place), and to root afterwards: function code sees it read-only.
    chown_tree(&repo, FUNCTION_HOST_UID)?;
    let env = venv::ensure(&settings.venv, sandbox, project, &repo, &requirements, log).await;
    chown_tree(&repo, 0)?;
    let env = env?;
    let functions = manifest::read(&env, &repo, &module, sandbox, log).await?;
    Ok(BuildOutput {
        manifest: Manifest {
            module_path: module.path.clone(),
            module_name: module.name.clone(),
            venv: env.to_string_lossy().into_owned(),
            source_dir: repo.to_string_lossy().into_owned(),
            functions,
            secrets: toml.secrets,
            network_policy: toml.network_policy,
        },
    })
}

/// Build a deployment again on another node of a cluster: unpack its stored source
/// `archive` (content hash `hash`) into `dest` and build (or reuse) its environment, the
/// same one its first node built (environments are cached by their requirements). Returns
/// the environment and the source directory; the functions are the stored manifest's.
pub async fn build_from_archive(
    settings: &BuildSettings,
    project: &str,
    archive: &[u8],
    hash: &str,
    dest: PathBuf,
    log: &LogSink,
) -> Result<(PathBuf, PathBuf), DeployError> {
    let cgroup = Cgroup::create(&settings.sandbox.cgroup_name, settings.sandbox.limits)?;
    let mut sandbox = settings.sandbox.clone();
    sandbox.procs = cgroup.procs_files();
    let result = async {
        let repo = dest.join("src");
        if dest.exists() {
            std::fs::remove_dir_all(&dest)?;
        }
        crate::archive::unpack(archive, hash, &repo)?;
        let requirements = std::fs::read_to_string(repo.join("requirements.txt")).map_err(|e| {
            DeployError::Config(format!(
                "requirements.txt is missing from the stored source: {e}"
            ))
        })?;
        chown_tree(&repo, FUNCTION_HOST_UID)?;
        let env = venv::ensure(&settings.venv, &sandbox, project, &repo, &requirements, log).await;
        chown_tree(&repo, 0)?;
        Ok((env?, repo))
    }
    .await;
    let _ = tokio::task::spawn_blocking(move || cgroup.destroy()).await;
    result
}

/// Give `dir` and everything below it (not following links) to `uid`.
pub(crate) fn chown_tree(dir: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
    if std::fs::symlink_metadata(dir)?.is_dir() {
        for e in std::fs::read_dir(dir)? {
            chown_tree(&e?.path(), uid)?;
        }
    }
    Ok(())
}
