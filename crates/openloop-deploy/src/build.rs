//! The build pipeline: source → runloop.toml → environment → manifest.

use crate::venv::VenvSettings;
use crate::{manifest, source, venv, DeployError, LogSink, Manifest, ModuleConfig};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct BuildSettings {
    pub venv: VenvSettings,
    /// When set, the module is imported inside a Python sandbox with this scratch directory
    /// (user code never runs unconfined on the host).
    pub sandbox_scratch: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub manifest: Manifest,
}

/// Build `source` at `git_ref` into `dest` (the deployment's directory, created here).
pub async fn build(
    settings: &BuildSettings,
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
    let module = ModuleConfig::load(&repo)?;
    let _ = log.send(format!(
        "runloop.toml: module '{}' in {}",
        module.name, module.path
    ));
    let requirements = match std::fs::read_to_string(repo.join("requirements.txt")) {
        Ok(r) => r,
        Err(_) => {
            return Err(DeployError::Config(
                "requirements.txt is missing at the repository root; add one (it may be empty)"
                    .into(),
            ))
        }
    };
    let env = venv::ensure(&settings.venv, &requirements, log).await?;
    let functions = manifest::read(
        &env,
        &repo,
        &module,
        settings.sandbox_scratch.as_deref(),
        log,
    )
    .await?;
    Ok(BuildOutput {
        manifest: Manifest {
            module_path: module.path.clone(),
            module_name: module.name.clone(),
            venv: env.to_string_lossy().into_owned(),
            source_dir: repo.to_string_lossy().into_owned(),
            functions,
        },
    })
}
