//! `runloop.toml`: where the agent module lives.

use crate::DeployError;
use serde::Deserialize;
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
}

impl ModuleConfig {
    /// Read and check `runloop.toml` at the root of `repo`.
    pub fn load(repo: &Path) -> Result<ModuleConfig, DeployError> {
        let path = repo.join("runloop.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            DeployError::Config(format!(
                "cannot read runloop.toml at the repository root ({e}); add one with a [module] table giving `path` and `name`"
            ))
        })?;
        let file: File = toml::from_str(&text)
            .map_err(|e| DeployError::Config(format!("not valid TOML: {}", e.message())))?;
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
        Ok(m)
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
        let d = tempfile::tempdir().unwrap();
        assert!(ModuleConfig::load(d.path())
            .unwrap_err()
            .to_string()
            .contains("cannot read runloop.toml"));
    }
}
