//! Following one invocation from fork to outcome (its output: [`crate::output`]).

use crate::channels::Channel;
use crate::host::{destroy_later, ExitInfo, WarmHost};
pub use crate::output::{log_channel, LogLimits, LogLine, LOG_CHANNEL_RECORDS};
use crate::output::{notice, read_control, read_output, LogBudget};
use openloop_sandbox::cgroup::{Cgroup, Limits};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// The target of stage spans (`openloop_api::stages` times them).
const STAGE: &str = "openloop::stage";

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
pub async fn run(host: &WarmHost, req: RunRequest, logs: mpsc::Sender<LogLine>) -> RunOutcome {
    // The run's own cgroup: a memory hog or a fork bomb fails alone, and whatever the run
    // leaves behind is killed with it. Its spare already sits in a cgroup of its own.
    let budget = Arc::new(LogBudget::new(req.log_limits));
    let mut cgroup: Option<Cgroup> = None;
    let outcome = run_in(host, &req, &mut cgroup, &logs, &budget).await;
    host.forget(&req.invocation_id);
    finish(host, outcome, cgroup, &budget, &logs, &req)
        .instrument(tracing::info_span!(target: STAGE, "teardown"))
        .await
}

/// After the run: note dropped log lines, empty the run's cgroup, name an out-of-memory kill.
async fn finish(
    host: &WarmHost,
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
    // reported finished. Emptied, a cgroup with the runs' default limits is kept for a
    // next spare (`crate::recycle`); one made for other limits is removed.
    if let Some(cgroup) = cgroup {
        let recycled = (host.spec.run_limits == req.limits).then(|| host.recycled());
        match (cgroup.process_count() > 1, recycled) {
            (true, Some(recycled)) => recycled.keep_now(cgroup).await,
            (true, None) => {
                let _ = tokio::task::spawn_blocking(move || cgroup.destroy()).await;
            }
            (false, _) => release_later(host, req, cgroup),
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

/// The run's frame for its spare: what to run, with what, in which environment.
fn run_frame(req: &RunRequest) -> Vec<u8> {
    let body = json!({
        "invocation_id": req.invocation_id,
        "function": req.function,
        "request": req.request,
        "env": req.env,
    })
    .to_string();
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body.as_bytes());
    frame
}

/// Hand the run to a ready spare: into the run's cgroup (the spare's own, unless the run
/// has other limits), then the run's frame on the spare's control stream, which is what
/// starts it. A spare that died while it waited is passed over for the next.
async fn start(
    host: &WarmHost,
    req: &RunRequest,
) -> Result<Option<(crate::spares::Ready, Cgroup)>, String> {
    let frame = run_frame(req);
    loop {
        let mut spare = host.take_spare().await?;
        if host.was_killed(&req.invocation_id) {
            host.put_back(spare);
            return Ok(None);
        }
        let joined = match join_cgroup(spare.pid, spare.cgroup.clone(), host, req) {
            Ok(c) => c,
            Err(e) => {
                destroy_later([spare.cgroup]);
                return Err(format!("the run could not join its cgroup: {e}"));
            }
        };
        if spare.control.stream.write_all(&frame).await.is_ok() {
            return Ok(Some((spare, joined)));
        }
        release_later(host, req, joined);
    }
}

/// A run's cgroup, once the run is done with it: kept for a next spare when it has the
/// runs' default limits (`crate::recycle`), else removed; either off the async threads.
fn release_later(host: &WarmHost, req: &RunRequest, cgroup: Cgroup) {
    if host.spec.run_limits == req.limits {
        host.recycled().keep_later(vec![cgroup]);
    } else {
        destroy_later([cgroup]);
    }
}

async fn run_in(
    host: &WarmHost,
    req: &RunRequest,
    cgroup: &mut Option<Cgroup>,
    logs: &mpsc::Sender<LogLine>,
    budget: &Arc<LogBudget>,
) -> RunOutcome {
    let mut dead = host.dead_signal();
    let mut exit_rx = Some(host.expect_exit(&req.invocation_id));
    let started = async {
        tokio::select! {
            r = start(host, req) => r,
            r = dead.wait_for(|d| d.is_some()) => Err(format!(
                "its warm process stopped: {}",
                r.map(|d| d.clone().unwrap_or_default()).unwrap_or_default()
            )),
        }
    }
    .instrument(tracing::info_span!(target: STAGE, "handoff"))
    .await;
    let (spare, joined) = match started {
        Ok(Some(s)) => s,
        Ok(None) => return failure("Canceled", "the invocation was canceled before it started"),
        Err(e) => return failure("StartFailed", format!("the run could not start: {e}")),
    };
    *cgroup = Some(joined);
    let crate::spares::Ready {
        name,
        control,
        stdout,
        stderr,
        ..
    } = spare;
    // The warm process learns which run its spare is (for the run's kill and exit status)
    // and forks a replacement; the run is not waiting for it.
    if let Err(e) = host.taken(&name, &req.invocation_id, &req.function).await {
        tracing::debug!(invocation = %req.invocation_id, error = %e, "could not tell the warm process of a run");
    }
    let user_code = tracing::info_span!(target: STAGE, "user_code");
    let mut control = tokio::spawn(read_control(control, logs.clone(), budget.clone()));
    let mut readers: Vec<JoinHandle<()>> = [(Channel::Stdout, stdout), (Channel::Stderr, stderr)]
        .into_iter()
        .map(|(channel, mut s)| {
            s.channel = channel;
            tokio::spawn(read_output(s, logs.clone(), budget.clone()))
        })
        .collect();
    let mut exit: Option<ExitInfo> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    let outcome_frame: Option<Value> = loop {
        tokio::select! {
            r = async { exit_rx.as_mut().expect("guarded").await }, if exit_rx.is_some() => {
                exit = Some(r.unwrap_or_default());
                exit_rx = None;
                deadline = Some(tokio::time::Instant::now() + GRACE);
            }
            _ = async { let _ = dead.wait_for(|d| d.is_some()).await; }, if exit_rx.is_some() => {
                exit_rx = None;
                deadline = Some(tokio::time::Instant::now() + GRACE);
            }
            r = &mut control => {
                break r.ok().flatten();
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                control.abort();
                break None;
            }
        }
    };
    drop(user_code);
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
    for r in readers.iter_mut() {
        // A background process of the run may keep its output open; do not wait for it forever.
        if tokio::time::timeout(GRACE, &mut *r).await.is_err() {
            r.abort();
        }
    }
    match outcome_frame {
        Some(f) if f["type"] == "result" => RunOutcome::Success(f["value"].clone()),
        Some(f) if f["type"] == "error" => RunOutcome::Failure(f["error"].clone()),
        _ => failure("ProcessExited", describe_exit(exit)),
    }
}

/// The run's cgroup for its spare's process `pid`: the one the spare was moved into when it
/// registered, or, for a run with other limits, a new one the process is moved into (the
/// prepared one, left empty, goes). The engine socket admitted the spare's streams from this
/// same pid only.
fn join_cgroup(
    pid: i32,
    prepared: Cgroup,
    host: &WarmHost,
    req: &RunRequest,
) -> std::io::Result<Cgroup> {
    if pid <= 0 {
        return Err(std::io::Error::other("the run's pid is unknown"));
    }
    if host.spec.run_limits == req.limits {
        return Ok(prepared);
    }
    let c = Cgroup::create(&req.cgroup_name, req.limits)?;
    if let Err(e) = c.attach(pid) {
        // The spare stays in the prepared cgroup, which the caller removes with it.
        destroy_later([c]);
        return Err(e);
    }
    host.recycled().keep_later(vec![prepared]);
    Ok(c)
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
