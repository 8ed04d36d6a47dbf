//! The functions a deployment exports, read by importing its module.

use crate::build::BuildSandbox;
use crate::{DeployError, LogSink, ModuleConfig};
use openloop_sandbox::python::{APP, OUT, VENV};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub name: String,
    pub is_async: bool,
    /// Queue again after a server crash instead of failing.
    #[serde(default)]
    pub retryable: bool,
    pub request_schema: serde_json::Value,
    pub response_schema: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub module_path: String,
    pub module_name: String,
    /// Directory of the built environment.
    pub venv: String,
    /// Directory of the repository's files.
    pub source_dir: String,
    pub functions: Vec<FunctionSpec>,
    /// `runloop.toml` `[secrets]`: environment variable → secret name (names, never values).
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, String>,
    /// `runloop.toml` `[network] policy`: the network policy function code runs under.
    #[serde(default)]
    pub network_policy: Option<String>,
}

impl Manifest {
    pub fn function(&self, name: &str) -> Option<&FunctionSpec> {
        self.functions.iter().find(|f| f.name == name)
    }
}

#[derive(Deserialize)]
struct Output {
    functions: Option<Vec<FunctionSpec>>,
    error: Option<String>,
}

/// Import the module inside its environment, in the build's sandbox, and read its functions.
pub async fn read(
    venv: &Path,
    repo: &Path,
    module: &ModuleConfig,
    sandbox: &BuildSandbox,
    log: &LogSink,
) -> Result<Vec<FunctionSpec>, DeployError> {
    sandbox.owned_dir(&sandbox.scratch)?;
    let out_file = sandbox.scratch.join("manifest.json");
    let _ = std::fs::remove_file(&out_file);
    let module_dir = Path::new(APP).join(&module.path);
    let cmd = sandbox
        .python(repo, false)
        .bind(venv, VENV, false)
        .bind(&sandbox.scratch, OUT, true)
        .command(
            &format!("{VENV}/bin/python"),
            &[
                "-m".into(),
                "runloop._manifest".into(),
                "--module-dir".into(),
                module_dir.to_string_lossy().into_owned(),
                "--module".into(),
                module.name.clone(),
                "--out".into(),
                format!("{OUT}/manifest.json"),
            ],
        )?;
    let _ = log.send(format!(
        "importing module '{}' to read its functions",
        module.name
    ));
    let run = crate::venv::run_logged(cmd, "python -m runloop._manifest", log).await;
    let text = std::fs::read_to_string(&out_file).map_err(|_| {
        DeployError::Manifest(format!(
            "importing module '{}' crashed before it could be described: {}",
            module.name,
            run.as_ref().err().cloned().unwrap_or_default()
        ))
    })?;
    let _ = std::fs::remove_file(&out_file);
    let out: Output = serde_json::from_str(&text)
        .map_err(|e| DeployError::Manifest(format!("unreadable function manifest: {e}")))?;
    if let Some(err) = out.error {
        return Err(DeployError::Manifest(err));
    }
    let functions = out.functions.unwrap_or_default();
    for f in &functions {
        let _ = log.send(format!("found function {}", f.name));
    }
    Ok(functions)
}
