//! What every figure is measured with: the server processes the benchmark starts (one node,
//! or nodes of a cluster), the HTTP client, the timing loops (latencies, throughput), the calls
//! made to a server (`Bench`), and the memory of a process tree.

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
    pub(crate) key: String,
    _data: tempfile::TempDir,
}

impl Server {
    /// The server's data directory (its venvs, deployments, database).
    pub(crate) fn data_dir(&self) -> &std::path::Path {
        self._data.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        unsafe_kill(self.child.id(), 15);
        let _ = self.child.wait();
    }
}

pub(crate) fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub(crate) fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("no parent")?.to_path_buf())
}

pub(crate) async fn start_server(sleepers: usize) -> Result<Server> {
    start_server_in(tempfile::tempdir()?, sleepers, None).await
}

/// Start a server on a data directory prepared by the caller (and a database URL: SQLite in
/// the data directory when `None`).
pub(crate) async fn start_server_in(
    data: tempfile::TempDir,
    sleepers: usize,
    database_url: Option<&str>,
) -> Result<Server> {
    let limit = (sleepers + 64).to_string();
    // Each sleeping run holds a spare's control stream and its output streams open on
    // the engine socket; the default cap is sized for a normal server, not 5,000 runs.
    let connections = (3 * sleepers + 1024).max(8192).to_string();
    start_node(
        data,
        database_url,
        &[
            "--max-concurrent-runs",
            &limit,
            "--engine-max-connections",
            &connections,
        ],
        &[],
        None,
    )
    .await
}

/// Start `openloop serve` with `extra` arguments and `env`; its API key is `key` (a node
/// joining a database that has keys) or the admin key it makes on its first start.
pub(crate) async fn start_node(
    data: tempfile::TempDir,
    database_url: Option<&str>,
    extra: &[&str],
    env: &[(&str, &str)],
    key: Option<String>,
) -> Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let openloop = bin_dir()?.join("openloop");
    if !openloop.exists() {
        bail!(
            "{} not found: run `cargo build --release --workspace` first",
            openloop.display()
        );
    }
    let mut cmd = Command::new(&openloop);
    cmd.args(["serve", "--port", &port.to_string(), "--data-dir"])
        .arg(data.path())
        .args(extra)
        .envs(env.iter().copied());
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    let child = cmd
        .env("OPENLOOP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{url}/health")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the server did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let key = match key {
        Some(k) => k,
        None => std::fs::read_to_string(data.path().join("admin-key"))?
            .trim()
            .to_string(),
    };
    Ok(Server {
        child,
        url,
        key,
        _data: data,
    })
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The HTTP client of every figure (Openloop's and FastAPI's): keep-alive, a large pool.
pub(crate) fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?)
}

/// `calls` calls one after another; their latencies in ms, sorted.
pub(crate) async fn latencies<F, Fut>(calls: usize, mut call: F) -> Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Duration>>,
{
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        lat.push(ms(call().await?));
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(lat)
}

/// `clients` concurrent loops of `call` for `seconds`: calls started before the end count, and
/// the time runs to the last one's end. Calls per second.
pub(crate) async fn throughput<F, Fut>(clients: usize, seconds: u64, call: F) -> Result<f64>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Duration>>,
{
    let stop = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers = (0..clients).map(|_| async {
        let mut n = 0u64;
        while Instant::now() < stop {
            call().await?;
            n += 1;
        }
        anyhow::Ok(n)
    });
    let done: u64 = futures::future::try_join_all(workers)
        .await?
        .into_iter()
        .sum();
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

pub(crate) struct Bench {
    pub(crate) s: Server,
    pub(crate) http: reqwest::Client,
}

impl Bench {
    pub(crate) async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.s.url))
            .bearer_auth(&self.s.key)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        if !status.is_success() {
            bail!("POST {path}: {status} {v}");
        }
        Ok(v)
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.s.url))
            .bearer_auth(&self.s.key)
            .send()
            .await?;
        Ok(r.json().await?)
    }

    /// Deploy and wait for the outcome; returns the wall time.
    pub(crate) async fn deploy(&self, source: &Path) -> Result<Duration> {
        let t = Instant::now();
        let dep = self
            .post(
                "/v1/deployments",
                json!({"source": source, "name": "bench"}),
            )
            .await?;
        let id = dep["id"].as_str().context("deployment id")?.to_string();
        self.wait_for_end(&format!("/v1/deployments/{id}/logs/stream"))
            .await?;
        let elapsed = t.elapsed();
        let d = self.get(&format!("/v1/deployments/{id}")).await?;
        if d["status"] != "deployed" {
            bail!("deployment failed: {d}");
        }
        Ok(elapsed)
    }

    /// Follow a Server-Sent Events stream until its `end` event.
    pub(crate) async fn wait_for_end(&self, path: &str) -> Result<()> {
        let resp = self
            .http
            .get(format!("{}{path}", self.s.url))
            .bearer_auth(&self.s.key)
            .send()
            .await?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            if String::from_utf8_lossy(&chunk?).contains("event: end") {
                break;
            }
        }
        Ok(())
    }

    /// Time one `invoke_sync` of the benchmark's `function` with `request`; its result must
    /// satisfy `expected`.
    async fn timed_call(
        &self,
        function: &str,
        request: Value,
        expected: impl Fn(&Value) -> bool,
    ) -> Result<Duration> {
        let t = Instant::now();
        let v = self
            .post(
                &format!("/v1/functions/bench/{function}/invoke_sync"),
                json!({ "request": request }),
            )
            .await?;
        if !expected(&v["result"]) {
            bail!("unexpected result of {function}: {v}");
        }
        Ok(t.elapsed())
    }

    pub(crate) async fn echo(&self) -> Result<Duration> {
        self.timed_call("echo", json!({"text": "hi"}), |r| r == "hi")
            .await
    }

    /// `invoke_sync` of the seed's example agent: it creates a devbox, runs one command in
    /// it, and the devbox is shut down when the run ends.
    pub(crate) async fn example_agent(&self) -> Result<Duration> {
        self.timed_call("example_agent", json!({"name": "Bob"}), |r| {
            r.as_str().is_some_and(|r| {
                r.contains("executed hello from devbox") && r.ends_with("User: Bob")
            })
        })
        .await
    }

    /// `invoke_sync` of a function given a `SystemCoordinator` (the seed's example agent
    /// without its devbox).
    pub(crate) async fn greet(&self) -> Result<Duration> {
        self.timed_call("greet", json!({"name": "Bob"}), |r| {
            r.as_str().is_some_and(|r| r.starts_with("Hello Bob from "))
        })
        .await
    }
}

/// Proportional set size (kB) of a process and all its descendants.
/// Processes under `root` whose command line names `needle` (`/proc`, no allocation per
/// process beyond its command line).
pub(crate) fn tree_count(root: u32, needle: &str) -> usize {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                let after = stat.rsplit(')').next().unwrap_or("");
                if let Some(ppid) = after
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse::<u32>().ok())
                {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
    }
    let mut n = 0;
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                n += 1;
            }
        }
        stack.extend(children.get(&pid).into_iter().flatten());
    }
    n
}

pub(crate) fn tree_pss_kb(root: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![root];
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                let after = stat.rsplit(')').next().unwrap_or("");
                if let Some(ppid) = after
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse::<u32>().ok())
                {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
    }
    while let Some(pid) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("Pss:") {
                    total += v
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0);
                }
            }
        }
        stack.extend(children.get(&pid).cloned().unwrap_or_default());
    }
    total
}
