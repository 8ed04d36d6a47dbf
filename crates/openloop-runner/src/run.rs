//! Following one invocation from fork to outcome (its output: [`crate::output`]).

use crate::channels::{Channel, Channels};
use crate::host::{destroy_later, ExitInfo, WarmHost};
pub use crate::output::{log_channel, LogLimits, LogLine, LOG_CHANNEL_RECORDS};
use crate::output::{notice, read_control, read_output, LogBudget};
use openloop_sandbox::cgroup::{Cgroup, Limits};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// The target of stage spans (`openloop_api::stages` times them).
const STAGE: &str = "openloop::stage";

/// How long to wait for a run's streams once its process is known to be gone.
const GRACE: Duration = Duration::from_millis(1500);
/// How long a spare's streams may take to show once its warm process named it for a run
/// (they were connected before the spare read its run; this covers a server under load).
const SPARE_STREAMS: Duration = Duration::from_secs(5);

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
    /// How much of the run's output is kept as log records.
    pub log_limits: LogLimits,
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

/// Run one invocation in a child of `host`; log lines go to `logs` as they are produced.
pub async fn run(
    host: &WarmHost,
    channels: &Arc<Channels>,
    req: RunRequest,
    logs: mpsc::Sender<LogLine>,
) -> RunOutcome {
    let mut reg = channels.register(&req.invocation_id);
    // The run's own cgroup: a memory hog or a fork bomb fails alone, and whatever the run
    // leaves behind is killed with it. It is known once the run's process connects: usually
    // that process registered ahead of time and already sits in a cgroup of its own.
    let budget = Arc::new(LogBudget::new(req.log_limits));
    let mut cgroup: Option<Cgroup> = None;
    let outcome = run_in(host, &req, &mut reg, &mut cgroup, &logs, &budget).await;
    finish(outcome, cgroup, &budget, &logs, &req)
        .instrument(tracing::info_span!(target: STAGE, "teardown"))
        .await
}

/// After the run: note dropped log lines, empty the run's cgroup, name an out-of-memory kill.
async fn finish(
    outcome: RunOutcome,
    cgroup: Option<Cgroup>,
    budget: &LogBudget,
    logs: &mpsc::Sender<LogLine>,
    req: &RunRequest,
) -> RunOutcome {
    let (lines, bytes) = budget.dropped();
    if lines > 0 {
        let _ = logs
            .send(notice(format!(
                "log limit reached ({}): {lines} lines / {bytes} bytes dropped",
                budget.caps()
            )))
            .await;
    }
    let oom = cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
    // Whatever the run left running dies with it. When only the run's own process is left
    // (it takes a few milliseconds to tear down its namespaces after its result is in), that
    // happens off the run's path; processes it left behind are gone before the run is
    // reported finished.
    if let Some(cgroup) = cgroup {
        if cgroup.process_count() > 1 {
            let _ = tokio::task::spawn_blocking(move || cgroup.destroy()).await;
        } else {
            destroy_later([cgroup]);
        }
    }
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
    req: &RunRequest,
    reg: &mut crate::channels::Registration,
    cgroup: &mut Option<Cgroup>,
    logs: &mpsc::Sender<LogLine>,
    budget: &Arc<LogBudget>,
) -> RunOutcome {
    let msg = json!({
        "op": "run",
        "invocation_id": req.invocation_id,
        "function": req.function,
        "request": req.request,
        "key": reg.key,
        "env": req.env,
    });
    let forked = host
        .fork(msg, &req.invocation_id)
        .instrument(tracing::info_span!(target: STAGE, "fork"))
        .await;
    let (mut exit_rx, mut spare) = match forked {
        Ok((rx, spare)) => (Some(rx), spare),
        Err(e) => return failure("StartFailed", format!("the run could not start: {e}")),
    };
    // The spare's streams, connected ahead of the run; a spare that could not register
    // connects the run's own streams instead (the `Channel::Control` branch below).
    let spare_ready = async {
        match spare.take() {
            Some(name) => host.take_spare(&name, SPARE_STREAMS).await,
            None => None,
        }
    };
    tokio::pin!(spare_ready);
    let mut awaiting_spare = true;
    // Stage spans (see `openloop_api::stages`): until the run's process connects, then its code.
    let mut connecting = Some(tracing::info_span!(target: STAGE, "connect"));
    let mut user_code: Option<tracing::Span> = None;
    let mut dead = host.dead_signal();
    let mut exit: Option<ExitInfo> = None;
    let mut control: Option<JoinHandle<Option<Value>>> = None;
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let mut streams_seen = 0;
    let mut deadline: Option<tokio::time::Instant> = None;
    let outcome_frame: Option<Value> = loop {
        tokio::select! {
            ready = &mut spare_ready, if awaiting_spare && control.is_none() => {
                awaiting_spare = false;
                let Some(ready) = ready else { continue };
                drop(connecting.take());
                let crate::spares::Ready { pid, cgroup: prepared, control: mut conn, stdout, stderr } = ready;
                reg.seal(pid);
                let admitted = admit(&mut conn.stream, pid, Some(prepared), host, req)
                    .instrument(tracing::info_span!(target: STAGE, "admit"))
                    .await;
                match admitted {
                    Ok(joined) => {
                        user_code = Some(tracing::info_span!(target: STAGE, "user_code"));
                        *cgroup = Some(joined);
                        control = Some(tokio::spawn(read_control(conn, logs.clone(), budget.clone())));
                        for (channel, mut s) in [(Channel::Stdout, stdout), (Channel::Stderr, stderr)] {
                            s.channel = channel;
                            streams_seen += 1;
                            readers.push(tokio::spawn(read_output(s, logs.clone(), budget.clone())));
                        }
                    }
                    Err(e) => return failure("StartFailed", format!("the run could not join its cgroup: {e}")),
                }
            }
            Some(conn) = reg.connections.recv() => match conn.channel {
                // The run started on its spare's streams: nothing else is its control.
                Channel::Control if control.is_some() => {}
                Channel::Control => {
                    drop(connecting.take());
                    let mut conn = conn;
                    let prepared = host.take_prepared(conn.peer_pid);
                    let admitted = admit(&mut conn.stream, conn.peer_pid, prepared, host, req)
                        .instrument(tracing::info_span!(target: STAGE, "admit"))
                        .await;
                    match admitted {
                        Ok(joined) => {
                            user_code = Some(tracing::info_span!(target: STAGE, "user_code"));
                            *cgroup = Some(joined);
                            control = Some(tokio::spawn(read_control(conn, logs.clone(), budget.clone())));
                        }
                        Err(e) => return failure("StartFailed", format!("the run could not join its cgroup: {e}")),
                    }
                }
                Channel::Stdout | Channel::Stderr => {
                    streams_seen += 1;
                    readers.push(tokio::spawn(read_output(conn, logs.clone(), budget.clone())));
                }
                _ => {}
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
                drop(user_code.take());
                break r.ok().flatten();
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() && control.is_none() => {
                break None;
            }
        }
    };
    // The process is gone (its control stream closed). Its exit status only explains a run
    // that ended without a result; with one, it is not waited for (the process's last steps,
    // such as tearing down its namespaces, are off the run's path).
    let has_outcome =
        matches!(&outcome_frame, Some(f) if f["type"] == "result" || f["type"] == "error");
    if let Some(rx) = exit_rx.take().filter(|_| !has_outcome) {
        if let Ok(Ok(e)) = tokio::time::timeout(GRACE, rx).await {
            exit = Some(e);
        }
    }
    let drain_until = tokio::time::Instant::now() + Duration::from_millis(300);
    while streams_seen < 2 {
        match tokio::time::timeout_at(drain_until, reg.connections.recv()).await {
            Ok(Some(conn)) if matches!(conn.channel, Channel::Stdout | Channel::Stderr) => {
                streams_seen += 1;
                readers.push(tokio::spawn(read_output(
                    conn,
                    logs.clone(),
                    budget.clone(),
                )));
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

/// Put the run's process `pid` (known from its control connection) in a cgroup of its own:
/// the one prepared for it when it registered as a spare, or else a new one it is moved
/// into. Then let it go on (one byte on `control`): the child waits for this byte before it
/// runs any user code. The engine socket admits the run's output streams from this same pid
/// only.
async fn admit(
    control: &mut tokio::net::UnixStream,
    pid: i32,
    prepared: Option<Cgroup>,
    host: &WarmHost,
    req: &RunRequest,
) -> std::io::Result<Cgroup> {
    use tokio::io::AsyncWriteExt;
    if pid <= 0 {
        return Err(std::io::Error::other("the run's pid is unknown"));
    }
    let cgroup = match prepared {
        Some(c) if host.spec.run_limits == req.limits => c,
        other => {
            let c = Cgroup::create(&req.cgroup_name, req.limits)?;
            let attached = c.attach(pid);
            // A prepared cgroup with other limits is left empty by the move: it goes.
            destroy_later(other);
            if let Err(e) = attached {
                destroy_later([c]);
                return Err(e);
            }
            c
        }
    };
    control.write_all(b"\x01").await?;
    Ok(cgroup)
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
