//! Peer columns: the same echo call through Celery and through a bare FastAPI app, measured in
//! the same run as Openloop's figures, so their ratios mean something on a noisy machine.
//!
//! - Celery: a Redis the benchmark starts (loopback, free port, no persistence, its own temp
//!   dir) as broker and result backend, and a worker with `--concurrency 2 --pool prefork`
//!   running `echo(text)`. The client is `peers/celery_driver.py` (`echo.delay(text).get()`),
//!   which prints every latency and a throughput count as JSON.
//! - FastAPI: `POST /echo` returning its JSON body, under uvicorn (one worker, no access log),
//!   called from Rust with the same reqwest client and loops as Openloop's own figures.
//!
//! The Python packages (`peers/requirements.txt`, every version pinned) go into a venv the
//! benchmark makes with uv next to its own binary (`<target>/bench-peers-venv`), reused once
//! complete. Every process is started in its own process group and stopped with its group when
//! its guard drops, on success or error; its temp dir goes with it. A peer that cannot start
//! fails the benchmark, with its log.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Calls made before the timed ones, by every peer (Openloop's warm figures follow its cold
/// first call).
const WARMUP_CALLS: usize = 100;

/// The three figures each column of the comparison holds.
#[derive(Clone, Copy, Debug)]
pub struct CallFigures {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub per_s: f64,
}

/// What the peers need on this machine: the venv's Python, `redis-server`, the peers' code.
pub struct Env {
    python: PathBuf,
    redis: PathBuf,
    src: PathBuf,
}

fn peers_src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Check `redis-server`, and make (or reuse) the peers' venv under `cache_dir`.
pub fn prepare(cache_dir: &Path) -> Result<Env> {
    let redis = Some(PathBuf::from("/usr/bin/redis-server"))
        .filter(|p| p.is_file())
        .or_else(|| which("redis-server"))
        .context(
            "redis-server not found (the Celery peer's broker): `apt-get install -y \
             redis-server`, or run with --no-peers",
        )?;
    let src = peers_src();
    let requirements = src.join("requirements.txt");
    let python = std::env::var("OPENLOOP_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let uv = std::env::var("OPENLOOP_UV").unwrap_or_else(|_| "uv".into());
    let venv = cache_dir.join("bench-peers-venv");
    let marker = venv.join(".openloop-bench-complete");
    // The venv counts as complete only with this interpreter and these exact pins.
    let want = format!(
        "python={python}\n{}",
        std::fs::read_to_string(&requirements)
            .with_context(|| format!("reading {}", requirements.display()))?
    );
    let complete = std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str())
        && venv.join("bin/python").exists();
    if !complete {
        eprintln!(
            "  peers: installing Celery, Redis client, FastAPI and uvicorn into {} with uv",
            venv.display()
        );
        if venv.exists() {
            std::fs::remove_dir_all(&venv)
                .with_context(|| format!("removing the incomplete {}", venv.display()))?;
        }
        let run = |args: &[&std::ffi::OsStr]| -> Result<()> {
            let status = Command::new(&uv)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .with_context(|| {
                    format!("running {uv} (install it: scripts/install-deps.sh), or run with --no-peers")
                })?;
            if !status.success() {
                bail!("`{uv} {args:?}` failed ({status}): the peers' venv could not be made");
            }
            Ok(())
        };
        run(&[
            "venv".as_ref(),
            "--quiet".as_ref(),
            "--no-project".as_ref(),
            "--python".as_ref(),
            python.as_ref(),
            venv.as_os_str(),
        ])?;
        let venv_python = venv.join("bin/python");
        run(&[
            "pip".as_ref(),
            "install".as_ref(),
            "--quiet".as_ref(),
            "--python".as_ref(),
            venv_python.as_os_str(),
            "-r".as_ref(),
            requirements.as_os_str(),
        ])?;
        std::fs::write(&marker, &want)?;
    }
    Ok(Env {
        python: venv.join("bin/python"),
        redis,
        src,
    })
}

impl Env {
    /// The venv's Python, importing the peers' code, writing nothing into the source tree.
    fn python(&self, cwd: &Path) -> Command {
        let mut c = Command::new(&self.python);
        c.current_dir(cwd)
            .env("PYTHONPATH", &self.src)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONNOUSERSITE", "1")
            .env("PYTHONUNBUFFERED", "1");
        c
    }
}

/// A peer's process, in a process group of its own; stopped with its whole group on drop.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    exited: bool,
}

impl Proc {
    /// Start `cmd` with stderr (and stdout, unless `stdout` is given) going to `log`.
    fn spawn(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
        stdout: Option<&Path>,
    ) -> Result<Proc> {
        let err = File::create(log)?;
        let out = match stdout {
            Some(p) => File::create(p)?,
            None => err.try_clone()?,
        };
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("the {name} peer could not be started: {cmd:?}"))?;
        Ok(Proc {
            name,
            child,
            log: log.to_path_buf(),
            exited: false,
        })
    }

    /// The exit status, if the process has ended.
    fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let st = self.child.try_wait()?;
        self.exited |= st.is_some();
        Ok(st)
    }

    /// Fail, with the end of its log, if the process has ended.
    fn check_running(&mut self) -> Result<()> {
        if let Some(st) = self.exit_status()? {
            bail!(
                "the {} peer exited ({st}); the end of its log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn signal_group(&self, sig: i32) {
        // The group id is the leader's pid: while the leader is unreaped, or any member of its
        // group lives, no other process can be given that id.
        let pgid = self.child.id() as libc::pid_t;
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.exited {
            self.signal_group(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Whatever is left of its group (a worker's pool, a driver's clients).
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

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

/// A target of the issue: `ratio` (Openloop over the peer) compared with `bound`.
struct Target {
    name: &'static str,
    key: &'static str,
    ratio: f64,
    bound: f64,
    at_most: bool,
}

impl Target {
    fn met(&self) -> bool {
        if self.at_most {
            self.ratio <= self.bound
        } else {
            self.ratio >= self.bound
        }
    }
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// Print the comparison table and the targets, and add the peers' figures, the ratios and
/// whether each target is met to `figures` (the JSON line).
pub fn report(
    openloop: CallFigures,
    celery: CallFigures,
    fastapi: CallFigures,
    clients: usize,
    figures: &mut serde_json::Map<String, Value>,
) {
    for (peer, f) in [("celery", celery), ("fastapi", fastapi)] {
        figures.insert(format!("{peer}_warm_p50_ms"), json!(round(f.p50_ms, 2)));
        figures.insert(format!("{peer}_warm_p99_ms"), json!(round(f.p99_ms, 2)));
        figures.insert(
            format!("{peer}_throughput_{clients}_clients_per_s"),
            json!(round(f.per_s, 2)),
        );
    }
    let ratio = |a: f64, b: f64| a / b;
    let rows = [
        (
            "warm p50, 1 client",
            "p50",
            openloop.p50_ms,
            celery.p50_ms,
            fastapi.p50_ms,
            "ms",
        ),
        (
            "warm p99, 1 client",
            "p99",
            openloop.p99_ms,
            celery.p99_ms,
            fastapi.p99_ms,
            "ms",
        ),
        (
            "throughput",
            "throughput",
            openloop.per_s,
            celery.per_s,
            fastapi.per_s,
            "/s",
        ),
    ];
    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>16} {:>17}",
        "same run", "Openloop", "Celery", "FastAPI", "Openloop/Celery", "Openloop/FastAPI"
    );
    for (label, key, o, c, f, unit) in rows {
        let label = if key == "throughput" {
            format!("{label}, {clients} clients")
        } else {
            label.to_string()
        };
        println!(
            "{label:<28} {:>12} {:>12} {:>12} {:>16.2} {:>17.2}",
            format!("{o:.2} {unit}"),
            format!("{c:.2} {unit}"),
            format!("{f:.2} {unit}"),
            ratio(o, c),
            ratio(o, f)
        );
        figures.insert(
            format!("ratio_{key}_openloop_over_celery"),
            json!(round(ratio(o, c), 3)),
        );
        figures.insert(
            format!("ratio_{key}_openloop_over_fastapi"),
            json!(round(ratio(o, f), 3)),
        );
    }
    let targets = [
        Target {
            name: "p50 <= 0.6 x Celery p50",
            key: "target_p50_vs_celery_met",
            ratio: ratio(openloop.p50_ms, celery.p50_ms),
            bound: 0.6,
            at_most: true,
        },
        Target {
            name: "p50 <= 3 x FastAPI p50",
            key: "target_p50_vs_fastapi_met",
            ratio: ratio(openloop.p50_ms, fastapi.p50_ms),
            bound: 3.0,
            at_most: true,
        },
        Target {
            name: "p99 <= 1.0 x Celery p99",
            key: "target_p99_vs_celery_met",
            ratio: ratio(openloop.p99_ms, celery.p99_ms),
            bound: 1.0,
            at_most: true,
        },
        Target {
            name: "throughput >= 2 x Celery",
            key: "target_throughput_vs_celery_met",
            ratio: ratio(openloop.per_s, celery.per_s),
            bound: 2.0,
            at_most: false,
        },
    ];
    println!();
    println!("{:<28} {:>12}", "target (Openloop vs peer)", "ratio");
    for t in &targets {
        let met = if t.met() { "met" } else { "not met" };
        println!("{:<28} {:>12.2} {:>12}", t.name, t.ratio, met);
        figures.insert(t.key.to_string(), json!(t.met()));
    }
}
