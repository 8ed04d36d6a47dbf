//! Virtual environments: one per (requirements, interpreter, SDK) hash, built once with `uv`.

use crate::{sdk, DeployError, LogSink};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[derive(Debug, Clone)]
pub struct VenvSettings {
    /// The `uv` binary.
    pub uv: PathBuf,
    /// The base interpreter, by its real path.
    pub python: PathBuf,
    /// Where environments are cached.
    pub cache_dir: PathBuf,
}

/// The environment's cache key.
pub fn env_key(settings: &VenvSettings, requirements: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"openloop-venv-v1\0");
    h.update(requirements.as_bytes());
    h.update(b"\0");
    h.update(settings.python.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(sdk::content_hash().as_bytes());
    hex::encode(h.finalize())[..24].to_string()
}

/// Return a ready environment for `requirements`, building it if it is not cached.
pub async fn ensure(
    settings: &VenvSettings,
    requirements: &str,
    log: &LogSink,
) -> Result<PathBuf, DeployError> {
    let key = env_key(settings, requirements);
    let dir = settings.cache_dir.join(&key);
    let ready = dir.join(".openloop-ready");
    if ready.exists() {
        let _ = log.send(format!(
            "reusing the cached Python environment {key} (requirements unchanged)"
        ));
        return Ok(dir);
    }
    std::fs::create_dir_all(&settings.cache_dir)?;
    let lock = lock(settings.cache_dir.join(format!("{key}.lock"))).await?;
    if ready.exists() {
        drop(lock);
        let _ = log.send(format!(
            "reusing the Python environment {key} built meanwhile"
        ));
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = log.send(format!("creating the Python environment {key} with uv"));
    let mut venv = Command::new(&settings.uv);
    venv.arg("venv")
        .arg("--python")
        .arg(&settings.python)
        .arg(&dir);
    run_logged(venv, log)
        .await
        .map_err(DeployError::Environment)?;

    let req_file = dir.join("requirements.txt");
    std::fs::write(&req_file, requirements)?;
    let python = dir.join("bin/python");
    let _ = log.send("installing requirements.txt".into());
    let mut install = Command::new(&settings.uv);
    install
        .args(["pip", "install", "--python"])
        .arg(&python)
        .arg("-r")
        .arg(&req_file)
        .arg("pydantic>=2,<3");
    run_logged(install, log).await.map_err(|e| {
        DeployError::Environment(format!("installing requirements.txt failed: {e}"))
    })?;
    let site = site_packages(&dir)?;
    sdk::install(&site)?;
    let _ = log.send(format!(
        "installed the runloop SDK {} into the environment",
        sdk::content_hash()
    ));
    std::fs::write(&ready, &key)?;
    drop(lock);
    Ok(dir)
}

fn site_packages(venv: &Path) -> Result<PathBuf, DeployError> {
    let lib = venv.join("lib");
    for e in std::fs::read_dir(&lib)? {
        let p = e?.path().join("site-packages");
        if p.is_dir() {
            return Ok(p);
        }
    }
    Err(DeployError::Environment(format!(
        "no site-packages under {}",
        lib.display()
    )))
}

/// Run a command with its output copied line by line to the build log.
/// On failure, the error carries the last lines of output.
pub async fn run_logged(mut cmd: Command, log: &LogSink) -> Result<(), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("UV_PYTHON_DOWNLOADS", "never")
        .env("UV_NO_PROGRESS", "1")
        .env("NO_COLOR", "1");
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not run {program}: {e}"))?;
    let tail = Tail::default();
    let (_, _, status) = tokio::join!(
        pump(child.stdout.take(), log, &tail),
        pump(child.stderr.take(), log, &tail),
        child.wait()
    );
    let status = status.map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        let t = tail
            .0
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default();
        Err(format!("{program} exited with {status}:\n{t}"))
    }
}

/// The last lines a command printed, for the failure message.
#[derive(Default)]
struct Tail(std::sync::Mutex<std::collections::VecDeque<String>>);

async fn pump<R: tokio::io::AsyncRead + Unpin>(src: Option<R>, log: &LogSink, tail: &Tail) {
    let Some(src) = src else { return };
    let mut lines = BufReader::new(src).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut t) = tail.0.lock() {
            t.push_back(line.clone());
            if t.len() > 20 {
                t.pop_front();
            }
        }
        let _ = log.send(line);
    }
}

struct Lock(#[allow(dead_code)] std::fs::File);

async fn lock(path: PathBuf) -> Result<Lock, DeployError> {
    tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Lock(f))
    })
    .await
    .map_err(|e| DeployError::Io(std::io::Error::other(e)))?
    .map_err(DeployError::Io)
}
