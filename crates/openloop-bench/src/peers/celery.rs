//! The Celery peer: a Redis broker and a prefork worker started here, `celery_driver.py` as the
//! client, its JSON read back into figures.

use super::proc::{free_port, Proc};
use super::{CallFigures, Env, WARMUP_CALLS};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// Wait until Redis answers `PING` on `port`.
async fn wait_for_redis(redis: &mut Proc, port: u16) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        redis.check_running()?;
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut buf = [0u8; 7];
            if s.write_all(b"PING\r\n").await.is_ok()
                && s.read_exact(&mut buf).await.is_ok()
                && &buf == b"+PONG\r\n"
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "redis-server did not answer PING on 127.0.0.1:{port} within 30 s; its log:\n{}",
                redis.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Celery's figures: Redis and a worker started here, `celery_driver.py` as the client.
pub async fn celery(env: &Env, calls: usize, clients: usize, seconds: u64) -> Result<CallFigures> {
    let dir = tempfile::Builder::new()
        .prefix("openloop-bench-celery-")
        .tempdir()?;
    let port = free_port()?;
    let mut redis_cmd = Command::new(&env.redis);
    redis_cmd
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir.path())
        .current_dir(dir.path());
    let mut redis = Proc::spawn("Redis", redis_cmd, &dir.path().join("redis.log"), None)?;
    wait_for_redis(&mut redis, port).await?;
    let url = format!("redis://127.0.0.1:{port}/0");

    let mut worker_cmd = env.python(dir.path());
    worker_cmd
        .args(["-m", "celery", "-A", "celery_app", "worker"])
        .args([
            "--concurrency",
            "2",
            "--pool",
            "prefork",
            "--loglevel",
            "warning",
        ])
        // No worker-to-worker chatter: there is one worker.
        .args([
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ])
        .env("PEER_REDIS_URL", &url);
    let mut worker = Proc::spawn(
        "Celery worker",
        worker_cmd,
        &dir.path().join("worker.log"),
        None,
    )?;

    let out = dir.path().join("driver.json");
    let mut driver_cmd = env.python(dir.path());
    driver_cmd
        .arg(env.src.join("celery_driver.py"))
        .args([
            "--calls",
            &calls.to_string(),
            "--clients",
            &clients.to_string(),
        ])
        .args([
            "--seconds",
            &seconds.to_string(),
            "--warmup",
            &WARMUP_CALLS.to_string(),
        ])
        .env("PEER_REDIS_URL", &url);
    let mut driver = Proc::spawn(
        "Celery client",
        driver_cmd,
        &dir.path().join("driver.log"),
        Some(&out),
    )?;
    // The driver has its own timeouts; this only bounds a stuck one.
    let deadline = Instant::now() + Duration::from_secs(180 + seconds + calls as u64 / 10);
    let status = loop {
        if let Some(st) = driver.exit_status()? {
            break st;
        }
        worker.check_running()?;
        redis.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "the Celery client did not finish; its log:\n{}",
                driver.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !status.success() {
        bail!(
            "the Celery client failed ({status}):\n{}\nthe worker's log:\n{}",
            driver.log_tail(),
            worker.log_tail()
        );
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)
        .context("the Celery client's JSON")?;
    let mut lat: Vec<f64> = v["latencies_ms"]
        .as_array()
        .context("latencies_ms")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    if lat.len() != calls {
        bail!("the Celery client timed {} calls, not {calls}", lat.len());
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let done = v["throughput_calls"].as_f64().context("throughput_calls")?;
    let elapsed = v["throughput_seconds"]
        .as_f64()
        .context("throughput_seconds")?;
    Ok(CallFigures {
        p50_ms: crate::percentile(&lat, 0.5),
        p99_ms: crate::percentile(&lat, 0.99),
        per_s: done / elapsed,
    })
}
