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
    /// JSON types alone decide the function's requests (every parameter a bare `str`, `int`,
    /// `float` or `bool`, no validators): see [`FunctionSpec::plainly_valid`].
    #[serde(default)]
    pub request_exact: bool,
}

impl FunctionSpec {
    /// Whether `request` is certainly valid without asking pydantic: the function's requests
    /// are decided by JSON types alone (`request_exact`), every required parameter is there,
    /// no other is, and each value has its parameter's JSON type. `false` means "ask", not
    /// "invalid" (pydantic's lax mode accepts more, such as `"5"` for an `int`).
    pub fn plainly_valid(&self, request: &serde_json::Value) -> bool {
        let schema = &self.request_schema;
        let (true, Some(req), Some(props)) = (
            self.request_exact,
            request.as_object(),
            schema["properties"].as_object(),
        ) else {
            return false;
        };
        let required = schema["required"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if required
            .iter()
            .any(|r| r.as_str().is_none_or(|name| !req.contains_key(name)))
        {
            return false;
        }
        req.iter().all(
            |(name, v)| match props.get(name).and_then(|p| p["type"].as_str()) {
                Some("string") => v.is_string(),
                Some("integer") => v.is_i64() || v.is_u64(),
                Some("number") => v.is_number(),
                Some("boolean") => v.is_boolean(),
                _ => false,
            },
        )
    }
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
        .with_venv_interpreter(venv)
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

#[cfg(test)]
mod plain_tests {
    use super::FunctionSpec;
    use serde_json::json;

    fn spec(exact: bool) -> FunctionSpec {
        FunctionSpec {
            name: "f".into(),
            is_async: false,
            retryable: false,
            request_schema: json!({
                "additionalProperties": false,
                "properties": {
                    "text": {"title": "Text", "type": "string"},
                    "times": {"default": 1, "title": "Times", "type": "integer"},
                    "ratio": {"title": "Ratio", "type": "number"},
                    "loud": {"title": "Loud", "type": "boolean"}
                },
                "required": ["text", "ratio", "loud"],
                "type": "object"
            }),
            response_schema: json!({}),
            request_exact: exact,
        }
    }

    #[test]
    fn only_requests_of_the_exact_json_types_skip_pydantic() {
        let s = spec(true);
        assert!(s.plainly_valid(&json!({"text": "a", "ratio": 1, "loud": true})));
        assert!(s.plainly_valid(&json!({"text": "a", "times": 3, "ratio": 0.5, "loud": false})));
        // Each of these goes to pydantic (which may accept some in lax mode, or say why not).
        for r in [
            json!({"text": "a", "ratio": 1}),
            json!({"text": "a", "ratio": 1, "loud": true, "other": 1}),
            json!({"text": 5, "ratio": 1, "loud": true}),
            json!({"text": "a", "times": "3", "ratio": 1, "loud": true}),
            json!({"text": "a", "times": 1.5, "ratio": 1, "loud": true}),
            json!({"text": "a", "ratio": "1", "loud": true}),
            json!({"text": "a", "ratio": 1, "loud": 1}),
            json!({"text": null, "ratio": 1, "loud": true}),
            json!(["a"]),
        ] {
            assert!(!s.plainly_valid(&r), "{r}");
        }
        // A function whose requests JSON types do not decide always asks.
        assert!(!spec(false).plainly_valid(&json!({"text": "a", "ratio": 1, "loud": true})));
    }
}
