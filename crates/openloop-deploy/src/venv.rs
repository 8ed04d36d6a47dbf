//! Virtual environments: one per (project, requirements, interpreter, SDK) hash, built once
//! with `uv` inside the build's sandbox.
//!
//! `uv` and every package build hook it runs (sdists, local path packages) run in a jail
//! (see `openloop_sandbox::python`) as an unprivileged uid, with only the environment being
//! built, the project's own package cache and its source writable. Environments and caches
//! are per project, so one project's build hooks can never plant code in another's.

use crate::build::BuildSandbox;
use crate::{sdk, DeployError, LogSink};
use openloop_sandbox::python::{APP, UV, UV_CACHE, VENV};
use openloop_sync::lock as lock_mutex;
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
    /// Where each project's `uv` package cache is kept.
    pub uv_cache_dir: PathBuf,
}

/// Variables of the server's environment that reach a build (package index and proxy
/// settings); nothing else of the server's environment does.
pub const PASSED_TO_BUILDS: &[&str] = &[
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_INDEX",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// The environment's cache key.
pub fn env_key(settings: &VenvSettings, project: &str, requirements: &str) -> String {
    let mut h = Sha256::new();
    // v3: environments carry compiled bytecode (see `ensure`).
    h.update(b"openloop-venv-v3\0");
    h.update(project.as_bytes());
    h.update(b"\0");
    h.update(requirements.as_bytes());
    h.update(b"\0");
    h.update(settings.python.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(sdk::content_hash().as_bytes());
    hex::encode(h.finalize())[..24].to_string()
}

/// Return a ready environment for `requirements` (read from `repo`), building it in the
/// build's sandbox if it is not cached.
pub async fn ensure(
    settings: &VenvSettings,
    sandbox: &BuildSandbox,
    project: &str,
    repo: &Path,
    requirements: &str,
    log: &LogSink,
) -> Result<PathBuf, DeployError> {
    let key = env_key(settings, project, requirements);
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
    let uv_cache = settings
        .uv_cache_dir
        .join(&env_key(settings, project, "")[..16]);
    for d in [&dir, &uv_cache] {
        sandbox.owned_dir(d)?;
    }
    let mut jail = sandbox
        .python(repo, true)
        .with_interpreter(&settings.python)
        .bind(&dir, VENV, true)
        .bind(&settings.uv, UV, false)
        .bind(&uv_cache, UV_CACHE, true)
        .env("UV_CACHE_DIR", UV_CACHE)
        .env("UV_PYTHON_DOWNLOADS", "never")
        .env("UV_LINK_MODE", "copy")
        .env("UV_NO_PROGRESS", "1")
        .env("NO_COLOR", "1")
        // The host's certificate store (/etc is visible read-only), so a site's own CA works.
        .env("UV_NATIVE_TLS", "1");
    // How this host reaches a package index is the operator's setting: only these pass.
    for var in PASSED_TO_BUILDS {
        if let Ok(value) = std::env::var(var) {
            jail = jail.env(var, &value);
        }
    }
    let _ = log.send(format!("creating the Python environment {key} with uv"));
    let python = settings.python.to_string_lossy().into_owned();
    let venv = jail.command(UV, &["venv".into(), "--python".into(), python, VENV.into()])?;
    run_logged(venv, "uv venv", log)
        .await
        .map_err(DeployError::Environment)?;

    let _ = log.send("installing requirements.txt".into());
    let install = jail.command(
        UV,
        &[
            "pip".into(),
            "install".into(),
            "--python".into(),
            format!("{VENV}/bin/python"),
            "-r".into(),
            format!("{APP}/requirements.txt"),
            "pydantic>=2,<3".into(),
        ],
    )?;
    run_logged(install, "uv pip install", log)
        .await
        .map_err(|e| {
            DeployError::Environment(format!("installing requirements.txt failed: {e}"))
        })?;
    let site = site_packages(&dir)?;
    sdk::install(&site)?;
    let _ = log.send(format!(
        "installed the runloop SDK {} into the environment",
        sdk::content_hash()
    ));
    // Bytecode for every installed module, written now: at run time the environment is
    // read-only, so without it each warm process start (and each build's module import)
    // compiles pydantic and the SDK from source again (about half of a start's time).
    crate::build::chown_tree(
        &site.join("runloop"),
        openloop_sandbox::jail::FUNCTION_HOST_UID,
    )?;
    let site_in_jail = Path::new(VENV).join(site.strip_prefix(&dir).map_err(|_| {
        DeployError::Environment(format!("{} is outside the environment", site.display()))
    })?);
    let compile = jail.command(
        &format!("{VENV}/bin/python"),
        &[
            "-m".into(),
            "compileall".into(),
            "-q".into(),
            "-j".into(),
            "0".into(),
            site_in_jail.to_string_lossy().into_owned(),
        ],
    )?;
    run_logged(compile, "python -m compileall", log)
        .await
        .map_err(|e| DeployError::Environment(format!("compiling the environment failed: {e}")))?;
    let _ = log.send("compiled the environment's modules to bytecode".into());
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
pub async fn run_logged(mut cmd: Command, program: &str, log: &LogSink) -> Result<(), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Jailed commands die with the thread that starts them: started from a lasting one.
    let mut child = openloop_sandbox::lasting::spawn(cmd)
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
        let t = lock_mutex(&tail.0)
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
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
        {
            let mut t = lock_mutex(&tail.0);
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
