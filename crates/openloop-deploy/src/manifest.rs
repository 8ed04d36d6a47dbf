//! The functions a deployment exports, read by importing its module.

use crate::{DeployError, LogSink, ModuleConfig};
use openloop_sandbox::python::PythonSandbox;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::process::Command;

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

/// Import the module inside its environment and read its functions.
pub async fn read(
    venv: &Path,
    repo: &Path,
    module: &ModuleConfig,
    sandbox_scratch: Option<&Path>,
    log: &LogSink,
) -> Result<Vec<FunctionSpec>, DeployError> {
    let python = venv.join("bin/python");
    let (mut cmd, out_file, out_arg) = match sandbox_scratch {
        Some(scratch) => {
            let sandbox = PythonSandbox {
                read_only: vec![venv.to_path_buf(), repo.to_path_buf()],
                scratch: scratch.to_path_buf(),
                cwd: repo.to_path_buf(),
            };
            let cmd = sandbox.command(&python)?;
            (
                cmd,
                scratch.join("manifest.json"),
                PathBuf::from("/tmp/manifest.json"),
            )
        }
        None => {
            let out = repo.join(".openloop-manifest.json");
            let mut cmd = Command::new(&python);
            cmd.current_dir(repo);
            (cmd, out.clone(), out)
        }
    };
    let _ = std::fs::remove_file(&out_file);
    cmd.args(["-m", "runloop._manifest", "--module-dir"])
        .arg(module.dir(repo))
        .args(["--module", &module.name, "--out"])
        .arg(&out_arg)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let _ = log.send(format!(
        "importing module '{}' to read its functions",
        module.name
    ));
    let run = crate::venv::run_logged(cmd, log).await;
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
