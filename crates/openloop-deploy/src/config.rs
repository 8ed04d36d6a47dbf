//! `runloop.toml`: where the agent module lives, and the secrets its functions get.
//!
//! ```toml
//! [module]
//! path = "./agent"
//! name = "bot"
//!
//! [secrets]            # environment variable = secret name (see /v1/secrets)
//! OPENAI_API_KEY = "openai"
//!
//! [network]
//! policy = "egress-openai"   # a network policy's id or name (see /v1/network-policies)
//! ```

use crate::DeployError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
pub struct ModuleConfig {
    /// Directory of the module, relative to the repository root.
    pub path: String,
    /// Module name, without `.py`.
    pub name: String,
}

#[derive(Deserialize)]
struct File {
    module: Option<ModuleConfig>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    network: NetworkTable,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkTable {
    /// The network policy (id or name) the deployment's function code runs under.
    policy: Option<String>,
}

/// The whole of `runloop.toml`.
#[derive(Debug, Clone)]
pub struct RunloopToml {
    pub module: ModuleConfig,
    /// Environment variable → secret name: what every run of the deployment is given.
    pub secrets: BTreeMap<String, String>,
    /// `[network] policy`: the network policy (id or name) function code runs under.
    pub network_policy: Option<String>,
}

impl RunloopToml {
    /// Read and check `runloop.toml` at the root of `repo`.
    pub fn load(repo: &Path) -> Result<RunloopToml, DeployError> {
        let (module, secrets, network) = ModuleConfig::load_with_secrets(repo)?;
        if let Some(p) = &network.policy {
            if p.trim().is_empty() {
                return Err(DeployError::Config(
                    "[network] policy must name a network policy (its id or name)".into(),
                ));
            }
        }
        for (var, name) in &secrets {
            if !is_env_name(var) {
                return Err(DeployError::Config(format!(
                    "[secrets] {var:?} is not an environment variable name (letters, digits and '_', not starting with a digit)"
                )));
            }
            if var.starts_with("OPENLOOP_") {
                return Err(DeployError::Config(format!(
                    "[secrets] {var}: names starting with OPENLOOP_ belong to Openloop; choose another variable"
                )));
            }
            if name.is_empty() || !name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
                return Err(DeployError::Config(format!(
                    "[secrets] {var} = {name:?}: a secret name holds only letters, digits and '_'"
                )));
            }
        }
        Ok(RunloopToml {
            module,
            secrets,
            network_policy: network.policy,
        })
    }
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

impl ModuleConfig {
    /// Read and check the `[module]` table of `runloop.toml` at the root of `repo`.
    pub fn load(repo: &Path) -> Result<ModuleConfig, DeployError> {
        Self::load_with_secrets(repo).map(|(m, _, _)| m)
    }

    fn load_with_secrets(
        repo: &Path,
    ) -> Result<(ModuleConfig, BTreeMap<String, String>, NetworkTable), DeployError> {
        let path = repo.join("runloop.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            DeployError::Config(format!(
                "cannot read runloop.toml at the repository root ({e}); add one with a [module] table giving `path` and `name`"
            ))
        })?;
        let file: File = toml::from_str(&text)
            .map_err(|e| DeployError::Config(format!("not valid TOML: {}", e.message())))?;
        let (secrets, network) = (file.secrets, file.network);
        let m = file.module.ok_or_else(|| {
            DeployError::Config("missing the [module] table (with `path` and `name`)".into())
        })?;
        if m.name.is_empty() || !m.name.split('.').all(is_identifier) {
            return Err(DeployError::Config(format!(
                "[module] name = {:?} is not a Python module name",
                m.name
            )));
        }
        let rel = Path::new(&m.path);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(DeployError::Config(format!(
                "[module] path = {:?} must be a relative path inside the repository",
                m.path
            )));
        }
        let dir = m.dir(repo);
        let file = dir.join(format!("{}.py", m.name.replace('.', "/")));
        let package = dir.join(m.name.replace('.', "/")).join("__init__.py");
        if !file.is_file() && !package.is_file() {
            return Err(DeployError::Config(format!(
                "module '{}' not found: expected {} (from [module] path = {:?})",
                m.name,
                Path::new(&m.path).join(format!("{}.py", m.name)).display(),
                m.path
            )));
        }
        Ok((m, secrets, network))
    }

    /// The directory to put on `sys.path`.
    pub fn dir(&self, repo: &Path) -> PathBuf {
        repo.join(&self.path)
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(toml: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("runloop.toml"), toml).unwrap();
        std::fs::create_dir_all(d.path().join("agent")).unwrap();
        std::fs::write(d.path().join("agent/bot.py"), "").unwrap();
        d
    }

    #[test]
    fn reads_the_seed_config() {
        let d = repo("[module]\npath = \"./agent\"\nname = \"bot\"\n");
        let m = ModuleConfig::load(d.path()).unwrap();
        assert_eq!(m.name, "bot");
        assert!(m.dir(d.path()).join("bot.py").exists());
        assert!(RunloopToml::load(d.path()).unwrap().secrets.is_empty());
    }

    #[test]
    fn reads_secrets() {
        let d = repo("[module]\npath = \"./agent\"\nname = \"bot\"\n[secrets]\nOPENAI_API_KEY = \"openai\"\n");
        let c = RunloopToml::load(d.path()).unwrap();
        assert_eq!(
            c.secrets.get("OPENAI_API_KEY").map(String::as_str),
            Some("openai")
        );
    }

    #[test]
    fn rejects_bad_configs() {
        for (toml, expect) in [
            ("[module\npath=1", "not valid TOML"),
            ("[other]\nx=1", "missing the [module] table"),
            (
                "[module]\npath = \"../x\"\nname = \"bot\"",
                "inside the repository",
            ),
            (
                "[module]\npath = \"./agent\"\nname = \"nope\"",
                "module 'nope' not found",
            ),
            (
                "[module]\npath = \"./agent\"\nname = \"bad-name\"",
                "not a Python module name",
            ),
        ] {
            let d = repo(toml);
            let err = ModuleConfig::load(d.path()).unwrap_err().to_string();
            assert!(err.contains(expect), "{toml}: {err}");
        }
        for (toml, expect) in [
            (
                "[secrets]\n\"1X\" = \"a\"",
                "not an environment variable name",
            ),
            ("[secrets]\nOPENLOOP_TOKEN = \"a\"", "belong to Openloop"),
            ("[secrets]\nX = \"a-b\"", "a secret name holds only"),
            ("[secrets]\nX = 3", "not valid TOML"),
        ] {
            let d = repo(&format!(
                "[module]\npath = \"./agent\"\nname = \"bot\"\n{toml}"
            ));
            let err = RunloopToml::load(d.path()).unwrap_err().to_string();
            assert!(err.contains(expect), "{toml}: {err}");
        }
        let d = tempfile::tempdir().unwrap();
        assert!(ModuleConfig::load(d.path())
            .unwrap_err()
            .to_string()
            .contains("cannot read runloop.toml"));
    }
}
