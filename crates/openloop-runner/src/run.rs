//! Following one invocation from fork to outcome.

use crate::channels::{Channel, Channels, Connection};
use crate::host::{ExitInfo, WarmHost};
use openloop_sandbox::cgroup::{Cgroup, Limits};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Longest log line kept as one line; longer output is split.
const MAX_LINE: usize = 16 * 1024;
/// Largest control frame (a result) accepted.
const MAX_CONTROL_FRAME: usize = 256 << 20;
/// How long to wait for a run's streams once its process is known to be gone.
const GRACE: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone)]
pub struct RunRequest {
    pub invocation_id: String,
    pub function: String,
    pub request: Value,
    /// Extra environment for the run (API URL and token for the SDK).
    pub env: BTreeMap<String, String>,
    /// Name of the run's own cgroup (unique on the host).
    pub cgroup_name: String,
    /// Memory, process and CPU limits of the run's own cgroup.
    pub limits: Limits,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub ts_ms: i64,
    /// `stdout`, `stderr` or `log`.
    pub stream: &'static str,
    pub level: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub enum RunOutcome {
    /// The function's return value, as JSON.
    Success(Value),
    /// `{type, message, traceback}`.
    Failure(Value),
}

pub fn failure(kind: &str, message: impl Into<String>) -> RunOutcome {
    RunOutcome::Failure(json!({"type": kind, "message": message.into(), "traceback": null}))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Run one invocation in a child of `host`; log lines go to `logs` as they are produced.
pub async fn run(
    host: &WarmHost,
    channels: &Arc<Channels>,
    req: RunRequest,
    logs: mpsc::UnboundedSender<LogLine>,
) -> RunOutcome {
    let mut reg = channels.register(&req.invocation_id);
    // The run's own cgroup: a memory hog or a fork bomb fails alone, and whatever the run
    // leaves behind is killed with it.
    let cgroup = match Cgroup::create(&req.cgroup_name, req.limits) {
        Ok(c) => c,
        Err(e) => {
            return failure(
                "StartFailed",
                format!("the run's cgroup could not be created: {e}"),
            )
        }
    };
    let outcome = run_in(host, channels, &req, &mut reg, &cgroup, logs).await;
    let oom = cgroup.oom_kills() > 0;
    // Whatever the run left running dies now; removing the cgroup directories (which the
    // kernel may refuse for a moment while the last processes exit) happens off the path.
    cgroup.kill_all();
    tokio::task::spawn_blocking(move || cgroup.destroy());
    match outcome {
        RunOutcome::Failure(mut e) if oom && e["type"] == "ProcessExited" => {
            e["type"] = json!("OutOfMemory");
            e["message"] = json!(format!(
                "the function's process was killed for using more than the run's {} MiB memory limit",
                req.limits.memory_bytes >> 20
            ));
            RunOutcome::Failure(e)
        }
        other => other,
    }
}

async fn run_in(
    host: &WarmHost,
    channels: &Arc<Channels>,
    req: &RunRequest,
    reg: &mut crate::channels::Registration,
    cgroup: &Cgroup,
    logs: mpsc::UnboundedSender<LogLine>,
) -> RunOutcome {
    let msg = json!({
        "op": "run",
        "invocation_id": req.invocation_id,
        "function": req.function,
        "request": req.request,
        "socket": channels.socket_path(),
        "key": reg.key,
        "env": req.env,
    });
    let mut exit_rx = match host.fork(msg, &req.invocation_id).await {
        Ok(rx) => Some(rx),
        Err(e) => return failure("StartFailed", format!("the run could not start: {e}")),
    };
    let mut dead = host.dead_signal();
    let mut exit: Option<ExitInfo> = None;
    let mut control: Option<JoinHandle<Option<Value>>> = None;
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let mut streams_seen = 0;
    let mut deadline: Option<tokio::time::Instant> = None;
    let outcome_frame: Option<Value> = loop {
        tokio::select! {
            Some(conn) = reg.connections.recv() => match conn.channel {
                Channel::Control => match admit(conn.stream, cgroup).await {
                    Ok(stream) => control = Some(tokio::spawn(read_control(stream, conn.early, logs.clone()))),
                    Err(e) => return failure("StartFailed", format!("the run could not join its cgroup: {e}")),
                },
                Channel::Stdout | Channel::Stderr => {
                    streams_seen += 1;
                    readers.push(tokio::spawn(read_output(conn, logs.clone())));
                }
            },
            r = async { exit_rx.as_mut().expect("guarded").await }, if exit_rx.is_some() => {
                exit = Some(r.unwrap_or_default());
                exit_rx = None;
                deadline = Some(tokio::time::Instant::now() + GRACE);
            }
            _ = async { let _ = dead.wait_for(|d| d.is_some()).await; }, if exit_rx.is_some() => {
                exit_rx = None;
                deadline = Some(tokio::time::Instant::now() + GRACE);
            }
            r = async { control.as_mut().expect("guarded").await }, if control.is_some() => {
                break r.ok().flatten();
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() && control.is_none() => {
                break None;
            }
        }
    };
    // The process is gone (its control stream closed). Collect the exit status and the rest of the output.
    if let Some(rx) = exit_rx.take() {
        if let Ok(Ok(e)) = tokio::time::timeout(GRACE, rx).await {
            exit = Some(e);
        }
    }
    let drain_until = tokio::time::Instant::now() + Duration::from_millis(300);
    while streams_seen < 2 {
        match tokio::time::timeout_at(drain_until, reg.connections.recv()).await {
            Ok(Some(conn)) if conn.channel != Channel::Control => {
                streams_seen += 1;
                readers.push(tokio::spawn(read_output(conn, logs.clone())));
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    for mut r in readers {
        // A background process of the run may keep its output open; do not wait for it forever.
        if tokio::time::timeout(GRACE, &mut r).await.is_err() {
            r.abort();
        }
    }
    match outcome_frame {
        Some(f) if f["type"] == "result" => RunOutcome::Success(f["value"].clone()),
        Some(f) if f["type"] == "error" => RunOutcome::Failure(f["error"].clone()),
        _ => failure("ProcessExited", describe_exit(exit)),
    }
}

/// Move the run's process (known from its control connection) into the run's cgroup, then
/// let it go on: the child waits for this byte before it runs any user code.
async fn admit(mut stream: UnixStream, cgroup: &Cgroup) -> std::io::Result<UnixStream> {
    use tokio::io::AsyncWriteExt;
    let pid = stream
        .peer_cred()?
        .pid()
        .ok_or_else(|| std::io::Error::other("the run's pid is unknown"))?;
    cgroup.attach(pid)?;
    stream.write_all(b"\x01").await?;
    Ok(stream)
}

fn describe_exit(exit: Option<ExitInfo>) -> String {
    match exit {
        Some(ExitInfo {
            signal: Some(s), ..
        }) => {
            let name = match s {
                9 => " (SIGKILL: killed, for example for using too much memory or by a cancel)",
                11 => " (SIGSEGV: segmentation fault)",
                6 => " (SIGABRT: aborted)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!(
                "the function's process was killed by signal {s}{name} before it returned a result"
            )
        }
        Some(ExitInfo { code: Some(c), .. }) => {
            format!("the function's process exited with code {c} before it returned a result (for example through os._exit)")
        }
        _ => "the function's process ended without a result (its warm process stopped)".into(),
    }
}

async fn read_control(
    s: UnixStream,
    early: Vec<u8>,
    logs: mpsc::UnboundedSender<LogLine>,
) -> Option<Value> {
    let mut s = std::io::Cursor::new(early).chain(s);
    let mut outcome = None;
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).await.is_err() {
            return outcome;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_CONTROL_FRAME {
            return Some(json!({"type": "error", "error": {
                "type": "ResultTooLarge",
                "message": format!("the result frame of {len} bytes is over the {MAX_CONTROL_FRAME}-byte limit"),
                "traceback": null}}));
        }
        let mut buf = vec![0u8; len];
        if s.read_exact(&mut buf).await.is_err() {
            return outcome;
        }
        let Ok(frame) = serde_json::from_slice::<Value>(&buf) else {
            continue;
        };
        match frame["type"].as_str() {
            Some("log") => {
                let _ = logs.send(LogLine {
                    ts_ms: frame["ts_ms"].as_i64().unwrap_or_else(now_ms),
                    stream: "log",
                    level: frame["level"].as_str().map(str::to_string),
                    message: frame["message"].as_str().unwrap_or_default().to_string(),
                });
            }
            Some("result") | Some("error") => outcome = Some(frame),
            _ => {}
        }
    }
}

async fn read_output(conn: Connection, logs: mpsc::UnboundedSender<LogLine>) {
    let stream = if conn.channel == Channel::Stdout {
        "stdout"
    } else {
        "stderr"
    };
    let mut s = conn.stream;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = conn.early;
    let emit = |bytes: &[u8]| {
        let _ = logs.send(LogLine {
            ts_ms: now_ms(),
            stream,
            level: None,
            message: String::from_utf8_lossy(bytes).into_owned(),
        });
    };
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            emit(&pending[start..start + pos]);
            start += pos + 1;
        }
        pending.drain(..start);
        while pending.len() > MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            emit(&pending);
            pending = rest;
        }
    }
    if !pending.is_empty() {
        emit(&pending);
    }
}
