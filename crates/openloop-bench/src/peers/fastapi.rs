//! The FastAPI peer: a `POST /echo` app under uvicorn started here, called from Rust with the
//! same loops as Openloop.

use super::proc::{free_port, Proc};
use super::{CallFigures, Env, WARMUP_CALLS};
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// FastAPI's figures: uvicorn started here, called from Rust like Openloop.
pub async fn fastapi(env: &Env, calls: usize, clients: usize, seconds: u64) -> Result<CallFigures> {
    let dir = tempfile::Builder::new()
        .prefix("openloop-bench-fastapi-")
        .tempdir()?;
    let port = free_port()?;
    let mut cmd = env.python(dir.path());
    cmd.args(["-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1"])
        .args([
            "--port",
            &port.to_string(),
            "--workers",
            "1",
            "--no-access-log",
        ])
        .args(["--log-level", "warning"]);
    let mut server = Proc::spawn(
        "FastAPI (uvicorn)",
        cmd,
        &dir.path().join("uvicorn.log"),
        None,
    )?;
    let url = format!("http://127.0.0.1:{port}/echo");
    let http = crate::http_client()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        server.check_running()?;
        if fastapi_echo(&http, &url).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "uvicorn did not answer POST /echo on 127.0.0.1:{port} within 60 s; its log:\n{}",
                server.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..WARMUP_CALLS {
        fastapi_echo(&http, &url).await?;
    }
    let lat = crate::latencies(calls, || fastapi_echo(&http, &url)).await?;
    let per_s = crate::throughput(clients, seconds, || fastapi_echo(&http, &url)).await?;
    server.check_running()?;
    Ok(CallFigures {
        p50_ms: crate::percentile(&lat, 0.5),
        p99_ms: crate::percentile(&lat, 0.99),
        per_s,
    })
}

/// One echo call, as `Bench::echo` makes Openloop's: a JSON POST, its JSON answer checked.
async fn fastapi_echo(http: &reqwest::Client, url: &str) -> Result<Duration> {
    let t = Instant::now();
    let r = http.post(url).json(&json!({"text": "hi"})).send().await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() || v["text"] != "hi" {
        bail!("unexpected FastAPI echo: {status} {v}");
    }
    Ok(t.elapsed())
}
