//! Test harness: the real `openloop` binary on a free port with a temporary data directory,
//! on SQLite or on a fresh PostgreSQL database.
#![allow(dead_code)]

pub mod repos;
pub mod ui;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_openloop"))
}

/// The devbox agent is another package's binary: build it once per test process.
fn ensure_agent() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "openloop-devbox-agent"])
                .current_dir(repo_root())
                .status()
                .expect("cargo build of the devbox agent");
            assert!(status.success(), "building openloop-devbox-agent failed");
            let agent = bin().parent().unwrap().join("openloop-devbox-agent");
            assert!(agent.exists(), "{} missing", agent.display());
            agent
        })
        .clone()
}

/// A fresh PostgreSQL database for one server, from `OPENLOOP_TEST_POSTGRES_URL`.
/// Returns None (the test is skipped) when the variable is unset or empty, except in CI
/// (`CI` set) or under `scripts/test.sh` (`OPENLOOP_REQUIRE_POSTGRES` set), where the test
/// fails instead: every PostgreSQL variant of a test comes through here.
pub async fn postgres_database() -> Option<String> {
    let url = std::env::var("OPENLOOP_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    let Some(admin) = url else {
        let required = ["CI", "OPENLOOP_REQUIRE_POSTGRES"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
        assert!(
            !required,
            "OPENLOOP_TEST_POSTGRES_URL must be set in CI and under scripts/test.sh: the PostgreSQL tests may not be skipped there"
        );
        eprintln!("skipping: OPENLOOP_TEST_POSTGRES_URL is not set");
        return None;
    };
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL");
    let name = format!("openloop_test_{}", uuid_like());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Some(format!("{base}/{name}"))
}

fn uuid_like() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", n, std::process::id())
}

pub struct Server {
    pub url: String,
    pub key: String,
    pub data: tempfile::TempDir,
    pub database_url: Option<String>,
    pub port: u16,
    child: Option<Child>,
    extra_env: Vec<(String, String)>,
    pub http: reqwest::Client,
}

/// Ports of the servers of this test process, held from their first start until they are
/// dropped: a server that restarts (after `kill9`) comes back on its own port, and no other
/// test's server may have taken it meanwhile (the kernel hands a freed port out again).
static PORTS_IN_USE: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A free port no other server of this process holds, reserved until [`release_port`].
fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if PORTS_IN_USE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

fn release_port(port: u16) {
    PORTS_IN_USE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&port);
}

impl Server {
    /// Start a server; `None` when the database is PostgreSQL and none is configured.
    pub async fn start(db: Db) -> Option<Server> {
        Self::start_with(db, &[]).await
    }

    pub async fn start_with(db: Db, env: &[(&str, &str)]) -> Option<Server> {
        let database_url = match db {
            Db::Sqlite => None,
            Db::Postgres => Some(postgres_database().await?),
        };
        let mut s = Server::started(database_url, None, env).await;
        s.key = std::fs::read_to_string(s.data.path().join("admin-key"))
            .unwrap()
            .trim()
            .to_string();
        Some(s)
    }

    /// Start another node of `first`'s cluster: the same PostgreSQL database (and so the same
    /// API keys), its own port and data directory, and `env` (which must give it the same
    /// `OPENLOOP_SECRETS_KEY` as the others).
    pub async fn join(first: &Server, env: &[(&str, &str)]) -> Server {
        assert!(first.database_url.is_some(), "a cluster needs PostgreSQL");
        Server::started(first.database_url.clone(), Some(first.key.clone()), env).await
    }

    /// A server on a fresh data directory and port, started; its key is `key`, or empty
    /// until the caller reads the admin key it made.
    async fn started(
        database_url: Option<String>,
        key: Option<String>,
        env: &[(&str, &str)],
    ) -> Server {
        let port = free_port();
        let mut s = Server {
            url: format!("http://127.0.0.1:{port}"),
            key: key.unwrap_or_default(),
            data: tempfile::tempdir().unwrap(),
            database_url,
            port,
            child: None,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            http: reqwest::Client::new(),
        };
        s.spawn().await;
        s
    }

    /// (Re)start the server process on the same port, data directory and database.
    pub async fn spawn(&mut self) {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--port", &self.port.to_string(), "--data-dir"])
            .arg(self.data.path())
            .arg("--agent-bin")
            .arg(ensure_agent())
            .env("OPENLOOP_LOG", "info,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(url) = &self.database_url {
            cmd.args(["--database-url", url]);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start openloop serve"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/health", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Set (or replace) an environment variable for the next [`Server::spawn`].
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_string(), value.to_string()));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Create a devbox over the API; returns its id.
    pub async fn create_devbox(&self, body: Value) -> String {
        let r = self.post("/v1/devboxes").json(&body).send().await.unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert!(status.is_success(), "create devbox: {status} {v}");
        assert_eq!(v["status"], "running", "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// Shut a devbox down over the API and insist it worked.
    pub async fn shutdown_devbox(&self, devbox: &str) {
        let r = self
            .post(&format!("/v1/devboxes/{devbox}/shutdown"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "shutdown {devbox}: {}", r.status());
    }

    /// Wait (up to 10 s) until a devbox a run created, recorded `shutdown` when the run
    /// ended, has had its sandbox torn down: its layer and its cgroups are gone. (A run's
    /// devboxes are torn down right after its outcome, off the outcome's path.)
    pub async fn assert_torn_down(&self, devbox: &str) {
        let layer = self.data.path().join("devboxes").join(devbox);
        let deadline = Instant::now() + Duration::from_secs(10);
        while layer.exists()
            || !openloop_sandbox::cgroup::leftover(devbox)
                .procs_files()
                .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "devbox {devbox} was not torn down within 10 s of its run's end"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `execute_sync` in a devbox: (exit status, stdout, stderr).
    pub async fn exec(&self, devbox: &str, command: &str) -> (i64, String, String) {
        let r = self
            .post(&format!("/v1/devboxes/{devbox}/execute_sync"))
            .json(&json!({ "command": command }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert!(status.is_success(), "exec {command:?}: {status} {v}");
        (
            v["exit_status"].as_i64().unwrap(),
            v["stdout"].as_str().unwrap().to_string(),
            v["stderr"].as_str().unwrap().to_string(),
        )
    }

    /// The server answers and a known-good devbox still runs commands.
    pub async fn assert_healthy(&self, witness: &str) {
        let r = self
            .http
            .get(format!("{}/health", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "server unhealthy");
        let (code, out, _) = self.exec(witness, "echo alive").await;
        assert_eq!(
            (code, out.as_str()),
            (0, "alive\n"),
            "the witness devbox stopped working"
        );
    }

    /// Kill the server with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// The messages of a run's log lines, oldest first (up to 10,000).
    pub async fn log_messages(&self, invocation: &str) -> Vec<String> {
        self.get_json(&format!(
            "/v1/functions/invocations/{invocation}/logs?limit=10000"
        ))
        .await["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["message"].as_str().unwrap().to_string())
            .collect()
    }

    /// Deploy with the `openloop deploy` command; returns (success, stdout, stderr).
    pub fn deploy_cli(&self, source: &Path, extra: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin())
            .arg("deploy")
            .arg(source)
            .args(["--server", &self.url, "--api-key", &self.key])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn deploy_ok(&self, source: &Path) {
        let (ok, out, err) = self.deploy_cli(source, &[]);
        assert!(ok, "deploy failed:\n{out}\n{err}");
    }

    pub async fn invoke_sync(&self, project: &str, function: &str, request: Value) -> (u16, Value) {
        let r = self
            .post(&format!("/v1/functions/{project}/{function}/invoke_sync"))
            .json(&json!({ "request": request }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// `invoke_async`; returns the new invocation's id.
    pub async fn invoke_async(&self, project: &str, function: &str, request: Value) -> String {
        let r = self
            .post(&format!("/v1/functions/{project}/{function}/invoke_async"))
            .json(&json!({ "request": request }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Poll an invocation until it has finished (bounded).
    pub async fn wait_invocation(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self
                .get_json(&format!("/v1/functions/invocations/{id}"))
                .await;
            if matches!(
                v["status"].as_str(),
                Some("success" | "failure" | "canceled")
            ) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "invocation {id} did not finish: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Once this server is gone for good (below), its port may serve another test.
        let _release = ReleasePort(self.port);
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc_kill(c.id() as i32, 15);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct ReleasePort(u16);

impl Drop for ReleasePort {
    fn drop(&mut self) {
        release_port(self.0);
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn example() -> PathBuf {
    repo_root().join("examples/example_python_agent")
}

/// Copy a directory tree (for making broken variants of a fixture).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The version of Runloop's Python client the tests drive the API with, pinned so that a new
/// release cannot change what the tests check.
pub const RUNLOOP_CLIENT_VERSION: &str = "3.0.0";

/// A virtual environment with Runloop's real client (`runloop_api_client` from PyPI, at
/// [`RUNLOOP_CLIENT_VERSION`]), built once and cached under `target/`.
pub fn runloop_client_venv() -> PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let dir = repo_root().join(format!(
        "target/test-venvs/runloop-client-{RUNLOOP_CLIENT_VERSION}"
    ));
    let python = dir.join("bin/python");
    if dir.join(".ready").exists() {
        return python;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ok = Command::new("uv")
        .args(["venv", "--quiet", "--python", "/usr/bin/python3"])
        .arg(&dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "uv venv failed");
    let ok = Command::new("uv")
        .args(["pip", "install", "--quiet", "--python"])
        .arg(&python)
        .arg(format!("runloop_api_client=={RUNLOOP_CLIENT_VERSION}"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "installing runloop_api_client from PyPI failed");
    std::fs::write(dir.join(".ready"), "").unwrap();
    python
}

/// Run one of `tests/clients/*.py` with Runloop's real client against `server` (plus `env`),
/// insist it succeeds and prints `marker`; its output.
pub async fn run_client_check(
    server: &Server,
    script: &str,
    env: &[(&str, &str)],
    marker: &str,
) -> String {
    let mut cmd = tokio::process::Command::new(runloop_client_venv());
    cmd.arg(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/clients")
            .join(script),
    )
    .env("OPENLOOP_URL", &server.url)
    .env("OPENLOOP_API_KEY", &server.key);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(marker), "{stdout}");
    stdout
}
