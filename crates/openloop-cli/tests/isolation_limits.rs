//! Exhaustion (issue 7, item 8): each test performs the attack for real and asserts that it
//! fails while a witness keeps working, and that the server's file descriptors, memory and
//! database stay bounded. Figures are printed (`--nocapture`) for the record.

mod common;

use common::{fixture, Db, Server};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn rss_mib(pid: u32) -> u64 {
    common::rss_kib(pid) >> 10
}

/// Size of everything under `dir`, in bytes.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn sqlite_bytes(server: &Server) -> u64 {
    ["openloop.db", "openloop.db-wal"]
        .iter()
        .map(|f| {
            std::fs::metadata(server.data.path().join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum()
}

/// Watches the server while an attack runs: the slowest `/health` answer and the most file
/// descriptors it held.
struct Watch {
    stop: Arc<AtomicBool>,
    slowest_health_ms: Arc<AtomicU64>,
    max_fds: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(server: &Server) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let slowest = Arc::new(AtomicU64::new(0));
        let max_fds = Arc::new(AtomicU64::new(0));
        let url = format!("{}/health", server.url);
        let pid = server.pid();
        let (s, sl, mf) = (stop.clone(), slowest.clone(), max_fds.clone());
        let task = tokio::spawn(async move {
            // A fresh connection each time: an attacker's load must not stop new clients.
            while !s.load(Ordering::SeqCst) {
                let http = reqwest::Client::new();
                let t = Instant::now();
                let r = http.get(&url).timeout(Duration::from_secs(10)).send().await;
                let ms = t.elapsed().as_millis() as u64;
                assert!(
                    r.map(|r| r.status().is_success()).unwrap_or(false),
                    "/health did not answer"
                );
                sl.fetch_max(ms, Ordering::SeqCst);
                mf.fetch_max(fd_count(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Watch {
            stop,
            slowest_health_ms: slowest,
            max_fds,
            task,
        }
    }

    /// (slowest /health in ms, most fds)
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the /health watcher failed");
        (
            self.slowest_health_ms.load(Ordering::SeqCst),
            self.max_fds.load(Ordering::SeqCst),
        )
    }
}

async fn witness_invocation(server: &Server) {
    let (code, inv) = server
        .invoke_sync("limits_agent", "echo", json!({"text": "witness"}))
        .await;
    assert_eq!(code, 200, "{inv}");
    assert_eq!(inv["status"], "success", "{inv}");
    assert_eq!(inv["result"], "witness", "{inv}");
}

/// (a) Thousands of connections to the engine socket that never send a header.
#[tokio::test]
async fn engine_socket_flood_without_headers_is_shed() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    server.deploy_ok(&fixture("limits_agent"));
    witness_invocation(&server).await;
    let pid = server.pid();
    let fds_before = fd_count(pid);
    let watch = Watch::start(&server);
    // 4 processes × 2,500 connections, each held 7 s (the header deadline is 5 s).
    let flood = server
        .invoke_async(
            "limits_agent",
            "engine_flood",
            json!({"processes": 4, "per_process": 2500, "hold": 7}),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Other runs start and finish while the flood is on.
    let t = Instant::now();
    witness_invocation(&server).await;
    let witness_ms = t.elapsed().as_millis();
    let done = server
        .wait_invocation(&flood, Duration::from_secs(120))
        .await;
    let (slowest, max_fds) = watch.finish().await;
    assert_eq!(done["status"], "success", "{done}");
    let r = &done["result"];
    let opened = r["opened"].as_u64().unwrap();
    eprintln!(
        "engine flood: {r}; server fds before {fds_before}, max {max_fds}; slowest /health {slowest} ms; witness run {witness_ms} ms"
    );
    assert!(
        opened >= 5000,
        "the attack did not open its connections: {r}"
    );
    assert_eq!(
        r["closed"], r["opened"],
        "every header-less connection was closed by the server: {r}"
    );
    // Node-wide at most 256 connections wait for their header (16 per process).
    assert!(
        max_fds < fds_before + 400,
        "the server's fds grew from {fds_before} to {max_fds}"
    );
    assert!(slowest < 2000, "/health took {slowest} ms under the flood");
    witness_invocation(&server).await;
    assert!(fd_count(pid) < fds_before + 50);
}

/// (b) Half-sent HTTP headers and thousands of idle TCP connections.
#[tokio::test]
async fn http_half_headers_and_idle_connections_are_shed() {
    let server = Server::start_with(
        Db::Sqlite,
        &[
            ("OPENLOOP_HTTP_HEADER_TIMEOUT", "2"),
            ("OPENLOOP_HTTP_MAX_CONNECTIONS", "500"),
        ],
    )
    .await
    .unwrap();
    server.deploy_ok(&fixture("limits_agent"));
    let addr = format!("127.0.0.1:{}", server.port);

    // A header that never ends is closed at the deadline.
    let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), half.read_to_end(&mut buf)).await;
    let closed_after = t.elapsed();
    assert!(read.is_ok(), "a half-sent header was still open after 10 s");
    assert!(closed_after < Duration::from_secs(4), "{closed_after:?}");

    // A long request in flight is busy, not idle: the flood below must not cut it.
    let long = {
        let http = server.http.clone();
        let url = format!(
            "{}/v1/functions/limits_agent/sleepy/invoke_sync",
            server.url
        );
        let key = server.key.clone();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"request": {"seconds": 8}}))
                .send()
                .await
        })
    };
    let pid = server.pid();
    let fds_before = fd_count(pid);
    let watch = Watch::start(&server);
    // 3,000 connections that send nothing, opened as fast as possible and held.
    let mut idle = Vec::new();
    for _ in 0..3000 {
        if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
            idle.push(s);
        }
    }
    let max_during = fd_count(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    witness_invocation(&server).await;
    let (slowest, max_fds) = watch.finish().await;
    // Every idle connection has been closed by now (evicted or timed out).
    let mut still_open = 0;
    for s in &idle {
        let mut b = [0u8; 256];
        if let Err(e) = s.try_read(&mut b) {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                still_open += 1;
            }
        }
    }
    eprintln!(
        "http: half header closed after {closed_after:?}; idle flood of {}: server fds before {fds_before}, during {max_during}, max {max_fds}; slowest /health {slowest} ms; still open after 3 s: {still_open}",
        idle.len()
    );
    assert_eq!(idle.len(), 3000);
    assert_eq!(
        still_open, 0,
        "idle connections outlived the header deadline"
    );
    assert!(
        max_fds.max(max_during) < fds_before + 600,
        "fds {fds_before} → {max_fds}"
    );
    assert!(slowest < 2000, "/health took {slowest} ms under the flood");
    let long = long.await.unwrap().expect("the busy request was cut");
    assert_eq!(long.status(), 200);
    let long: Value = long.json().await.unwrap();
    assert_eq!(long["result"], "slept 8.0", "{long}");
    drop(idle);
}

async fn log_flood(db: Db) {
    let Some(server) = Server::start(db).await else {
        return;
    };
    server.deploy_ok(&fixture("limits_agent"));
    witness_invocation(&server).await;
    let pid = server.pid();
    let rss_before = rss_mib(pid);
    let db_before = sqlite_bytes(&server);
    // 4 million one-byte lines (8 MB); the default caps keep 1,000,000 lines.
    let t = Instant::now();
    let (code, inv) = server
        .invoke_sync("limits_agent", "tiny_lines", json!({"lines": 4_000_000}))
        .await;
    let took = t.elapsed();
    assert_eq!(code, 200, "{inv}");
    assert_eq!(inv["status"], "success", "{inv}");
    assert_eq!(inv["result"], "printed");
    let id = inv["id"].as_str().unwrap();
    let rss_after = rss_mib(pid);
    let db_after = sqlite_bytes(&server);

    let mut records = Vec::new();
    let mut after = 0;
    loop {
        let page = server
            .get_json(&format!(
                "/v1/functions/invocations/{id}/logs?limit=10000&after_seq={after}"
            ))
            .await;
        let logs = page["logs"].as_array().unwrap().clone();
        after = page["next_seq"].as_i64().unwrap();
        records.extend(logs);
        if page["has_more"] != true {
            break;
        }
    }
    let kept_lines: u64 = records
        .iter()
        .filter(|r| r["stream"] == "stdout")
        .map(|r| r["message"].as_str().unwrap().split('\n').count() as u64)
        .sum();
    let last = records.last().unwrap();
    let summary = last["message"].as_str().unwrap();
    eprintln!(
        "log flood ({db:?}): {} records holding {kept_lines} lines; took {took:?}; server RSS {rss_before} → {rss_after} MiB; SQLite {db_before} → {db_after} bytes; last record: {summary}",
        records.len()
    );
    assert!(kept_lines <= 1_000_000, "{kept_lines} lines kept");
    assert!(kept_lines >= 999_000, "{kept_lines} lines kept");
    // Tiny lines are merged: far fewer records than lines.
    assert!(records.len() < 10_000, "{} records", records.len());
    assert_eq!(last["stream"], "log");
    assert_eq!(last["level"], "WARNING");
    let dropped = 4_000_000 - kept_lines;
    assert!(
        summary.starts_with("log limit reached")
            && summary.contains(&format!("{dropped} lines / {} bytes dropped", dropped * 2)),
        "{summary}"
    );
    assert!(
        records.iter().any(|r| r["message"]
            .as_str()
            .unwrap()
            .contains("further output of this run is dropped")),
        "the moment the cap was reached is recorded"
    );
    assert!(
        rss_after < rss_before + 64,
        "server RSS grew from {rss_before} to {rss_after} MiB"
    );
    if db == Db::Sqlite {
        assert!(
            db_after < db_before + (32 << 20),
            "the database grew from {db_before} to {db_after} bytes"
        );
    }
    witness_invocation(&server).await;
}

/// (c) A function printing millions of one-byte lines.
#[tokio::test]
async fn log_flood_is_capped_merged_and_recorded_sqlite() {
    log_flood(Db::Sqlite).await;
}

#[tokio::test]
async fn log_flood_is_capped_merged_and_recorded_postgres() {
    log_flood(Db::Postgres).await;
}

/// Bytes of stdout an execution's `stream_stdout_updates` carries until it ends.
async fn streamed_bytes(server: &Server, devbox: &str, execution: &str) -> usize {
    let body = server
        .get(&format!(
            "/v1/devboxes/{devbox}/executions/{execution}/stream_stdout_updates"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|data| {
            let v: Value = serde_json::from_str(data).unwrap();
            v["output"].as_str().unwrap().len()
        })
        .sum()
}

/// (d) 20 executions with 32 MiB of output each.
#[tokio::test]
async fn execution_output_lives_on_disk_within_a_cap() {
    let server = Server::start_with(Db::Sqlite, &[("OPENLOOP_DEVBOX_EXEC_OUTPUT_MB", "400")])
        .await
        .unwrap();
    let witness = server.create_devbox(json!({"name": "witness"})).await;
    let d = server.create_devbox(json!({})).await;
    let pid = server.pid();
    let rss_before = rss_mib(pid);
    // 16 MiB on stdout and 16 MiB on stderr each (the per-stream cap).
    let cmd =
        "head -c 16777216 /dev/zero | tr '\\0' o; head -c 16777216 /dev/zero | tr '\\0' e >&2";
    let mut ids = Vec::new();
    for _ in 0..20 {
        let r = server
            .post(&format!("/v1/devboxes/{d}/execute_async"))
            .json(&json!({ "command": cmd }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let v: Value = r.json().await.unwrap();
        let eid = v["execution_id"].as_str().unwrap().to_string();
        // Follow the output to its end, as a client watching the command would.
        let streamed = streamed_bytes(&server, &d, &eid).await;
        assert!(streamed <= 16 << 20);
        ids.push(eid);
    }
    // Every execution has completed (its stdout stream ended).
    let rss_after = rss_mib(pid);
    let out_dir = server.data.path().join("exec-output").join(&d);
    let on_disk = dir_bytes(&out_dir);
    eprintln!(
        "executions: 20 × 32 MiB; server RSS {rss_before} → {rss_after} MiB; on disk {} MiB",
        on_disk >> 20
    );
    assert!(
        rss_after < rss_before + 64,
        "server RSS grew from {rss_before} to {rss_after} MiB"
    );
    assert!(on_disk <= 400 << 20, "{on_disk} bytes on disk");
    assert!(on_disk >= 399 << 20, "{on_disk} bytes on disk");

    // The first executions are whole, read back from disk; once the devbox's 400 MiB are
    // used, later ones are marked truncated.
    let full = server
        .get_json(&format!("/v1/devboxes/{d}/executions/{}", ids[0]))
        .await;
    assert_eq!(full["status"], "completed");
    assert_eq!(full["exit_status"], 0);
    assert_eq!(full["stdout"].as_str().unwrap().len(), 16 << 20);
    assert!(full["stdout"].as_str().unwrap().bytes().all(|b| b == b'o'));
    assert_eq!(full["stderr"].as_str().unwrap().len(), 16 << 20);
    assert_eq!(full["stdout_truncated"], false);
    let tail = server
        .get_json(&format!("/v1/devboxes/{d}/executions/{}?last_n=1", ids[11]))
        .await;
    assert_eq!(tail["stdout"].as_str().unwrap().len(), 16 << 20);
    let last = server
        .get_json(&format!("/v1/devboxes/{d}/executions/{}", ids[19]))
        .await;
    assert_eq!(last["status"], "completed");
    assert_eq!(last["stdout_truncated"], true, "past the devbox's cap");
    assert_eq!(last["stdout"], "");
    // The streamed form of a kept execution gives the whole output.
    assert_eq!(streamed_bytes(&server, &d, &ids[1]).await, 16 << 20);

    server.assert_healthy(&witness).await;
    server.shutdown_devbox(&d).await;
    assert!(!out_dir.exists(), "the output files go with the devbox");
    server.assert_healthy(&witness).await;
}

async fn devbox_quotas(db: Db) {
    let Some(server) = Server::start_with(
        db,
        &[
            ("OPENLOOP_DEVBOX_MAX_PER_KEY", "3"),
            ("OPENLOOP_DEVBOX_MAX_PER_RUN", "2"),
        ],
    )
    .await
    else {
        return;
    };
    server.deploy_ok(&fixture("limits_agent"));
    let witness = server.create_devbox(json!({"name": "witness"})).await;
    let a = server.create_devbox(json!({})).await;
    server.create_devbox(json!({})).await;
    let r = server
        .post("/v1/devboxes")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("API key") && msg.contains("--devbox-max-per-key"),
        "{msg}"
    );
    // Shutting one down frees its place.
    server.shutdown_devbox(&a).await;
    server.create_devbox(json!({})).await;

    // A run: two devboxes, the third refused; one shut down makes room again.
    let (_, inv) = server
        .invoke_sync("limits_agent", "devbox_quota", json!({"attempts": 5}))
        .await;
    assert_eq!(inv["status"], "success", "{inv}");
    let r = &inv["result"];
    assert_eq!(r["created"], 2, "{inv}");
    assert_eq!(r["refusal"]["status"], 429, "{inv}");
    assert_eq!(r["refusal"]["code"], "quota_exceeded", "{inv}");
    let msg = r["refusal"]["message"].as_str().unwrap();
    assert!(
        msg.contains("run") && msg.contains("--devbox-max-per-run"),
        "{msg}"
    );
    assert!(r["after_shutdown"].is_string(), "{inv}");
    server.assert_healthy(&witness).await;
}

/// (e) Devboxes past the per-key and per-run quotas.
#[tokio::test]
async fn devbox_quotas_per_key_and_per_run_sqlite() {
    devbox_quotas(Db::Sqlite).await;
}

#[tokio::test]
async fn devbox_quotas_per_key_and_per_run_postgres() {
    devbox_quotas(Db::Postgres).await;
}

/// (f) A run's output streams connected again, from its own process or from another, with
/// the spare registration's key and the run's own spare name (all of which a run can read).
#[tokio::test]
async fn engine_streams_only_from_the_runs_own_process() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    server.deploy_ok(&fixture("limits_agent"));
    let (_, inv) = server
        .invoke_sync("limits_agent", "foreign_streams", json!({}))
        .await;
    assert_eq!(inv["status"], "success", "{inv}");
    let r = &inv["result"];
    eprintln!("foreign streams: {r}");
    let answer = |v: &Value| v.as_str().unwrap().to_string();
    assert!(
        answer(&r["same_process_stdout"])
            .contains("no spare of that name waits for its spare_stdout stream"),
        "{r}"
    );
    for channel in ["stdout", "stderr"] {
        let a = answer(&r["helper"][channel]);
        assert!(
            a.contains(&format!(
                "no spare of that name waits for its spare_{channel} stream"
            )),
            "{channel}: {a}"
        );
    }
    assert!(
        answer(&r["helper"]["control"]).contains("can register as a spare"),
        "{r}"
    );
    let id = inv["id"].as_str().unwrap();
    let messages = server.log_messages(id).await;
    assert!(
        messages
            .iter()
            .any(|m| m == "the run's own stdout still works"),
        "{messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains("FORGED")),
        "a refused stream reached the run's log: {messages:?}"
    );
    witness_invocation(&server).await;
}

/// (g) A run's process registering as a spare of its warm process (whose registration key it
/// holds, being a copy of that process) is refused: it stays in its run's cgroup.
#[tokio::test]
async fn a_run_cannot_register_as_a_spare_to_leave_its_cgroup() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    server.deploy_ok(&fixture("limits_agent"));
    let (_, inv) = server
        .invoke_sync("limits_agent", "spare_escape", json!({}))
        .await;
    assert_eq!(inv["status"], "success", "{inv}");
    let r = &inv["result"];
    assert!(
        r["answer"]
            .as_str()
            .is_some_and(|a| a.contains("can register as a spare")),
        "the server took a run's process as a spare: {r}"
    );
    let cgroups = r["cgroups"].as_str().unwrap();
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains(":memory:") && l.contains("/openloop-run-")),
        "the run left its run cgroup: {cgroups}"
    );
    witness_invocation(&server).await;
}

/// Many runs at once do not push their warm process past its memory limit: each run's
/// process leaves the pages it copied while it was forked charged to the warm cgroup (the
/// kernel does not move them with it), and the warm cgroup has room for them. Without that
/// room, 120 runs (about 2.3 MB each) overflow a 128 MiB warm process: the kernel kills it and
/// every run fails.
#[tokio::test]
async fn many_runs_at_once_leave_the_warm_process_alive() {
    let server = Server::start_with(
        Db::Sqlite,
        &[
            ("OPENLOOP_WARM_MEMORY_MB", "128"),
            ("OPENLOOP_MAX_CONCURRENT_RUNS", "120"),
        ],
    )
    .await
    .unwrap();
    server.deploy_ok(&fixture("limits_agent"));
    let mut ids = Vec::new();
    for _ in 0..120 {
        ids.push(
            server
                .invoke_async("limits_agent", "sleepy", json!({"seconds": 6.0}))
                .await,
        );
    }
    for id in &ids {
        let v = server.wait_invocation(id, Duration::from_secs(120)).await;
        assert_eq!(v["status"], "success", "{v}");
    }
}
