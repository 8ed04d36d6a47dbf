//! The peers' environment: finds `redis-server` and makes (or reuses) the throwaway Python venv
//! the peers run in.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What the peers need on this machine: the venv's Python, `redis-server`, the peers' code.
pub struct Env {
    pub(super) python: PathBuf,
    pub(super) redis: PathBuf,
    pub(super) src: PathBuf,
}

fn peers_src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Check `redis-server`, and make (or reuse) the peers' venv under `cache_dir`.
pub fn prepare(cache_dir: &Path) -> Result<Env> {
    let redis = Some(PathBuf::from("/usr/bin/redis-server"))
        .filter(|p| p.is_file())
        .or_else(|| which("redis-server"))
        .context(
            "redis-server not found (the Celery peer's broker): `apt-get install -y \
             redis-server`, or run with --no-peers",
        )?;
    let src = peers_src();
    let requirements = src.join("requirements.txt");
    let python = std::env::var("OPENLOOP_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let uv = std::env::var("OPENLOOP_UV").unwrap_or_else(|_| "uv".into());
    let venv = cache_dir.join("bench-peers-venv");
    let marker = venv.join(".openloop-bench-complete");
    // The venv counts as complete only with this interpreter and these exact pins.
    let want = format!(
        "python={python}\n{}",
        std::fs::read_to_string(&requirements)
            .with_context(|| format!("reading {}", requirements.display()))?
    );
    let complete = std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str())
        && venv.join("bin/python").exists();
    if !complete {
        eprintln!(
            "  peers: installing Celery, Redis client, FastAPI and uvicorn into {} with uv",
            venv.display()
        );
        if venv.exists() {
            std::fs::remove_dir_all(&venv)
                .with_context(|| format!("removing the incomplete {}", venv.display()))?;
        }
        let run = |args: &[&std::ffi::OsStr]| -> Result<()> {
            let status = Command::new(&uv)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .with_context(|| {
                    format!("running {uv} (install it: scripts/install-deps.sh), or run with --no-peers")
                })?;
            if !status.success() {
                bail!("`{uv} {args:?}` failed ({status}): the peers' venv could not be made");
            }
            Ok(())
        };
        run(&[
            "venv".as_ref(),
            "--quiet".as_ref(),
            "--no-project".as_ref(),
            "--python".as_ref(),
            python.as_ref(),
            venv.as_os_str(),
        ])?;
        let venv_python = venv.join("bin/python");
        run(&[
            "pip".as_ref(),
            "install".as_ref(),
            "--quiet".as_ref(),
            "--python".as_ref(),
            venv_python.as_os_str(),
            "-r".as_ref(),
            requirements.as_os_str(),
        ])?;
        std::fs::write(&marker, &want)?;
    }
    Ok(Env {
        python: venv.join("bin/python"),
        redis,
        src,
    })
}

impl Env {
    /// The venv's Python, importing the peers' code, writing nothing into the source tree.
    pub(super) fn python(&self, cwd: &Path) -> Command {
        let mut c = Command::new(&self.python);
        c.current_dir(cwd)
            .env("PYTHONPATH", &self.src)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONNOUSERSITE", "1")
            .env("PYTHONUNBUFFERED", "1");
        c
    }
}
