//! `openloop-bench`: starts its own server on a temporary data directory, deploys a bundled
//! echo and sleep function, and prints figures as a table and one JSON line.
//!
//! Run it with `cargo run --release -p openloop-bench` (build the workspace in release first).

mod blueprints;
mod cluster;
mod dashboard;
mod devbox_runtime;
mod devboxes;
mod disks;
mod harness;
mod peers;
mod postgres;
mod process_floor;
mod stages;

pub(crate) use harness::*;

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Warm invoke_sync calls for the latency figures.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Concurrent clients for the throughput figure.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Duration of the throughput run, in seconds.
    #[arg(long, default_value_t = 10)]
    throughput_seconds: u64,
    /// Sleeping invocations held at once.
    #[arg(long, default_value_t = 5000)]
    sleepers: usize,
    /// Repetitions of each devbox figure.
    #[arg(long, default_value_t = 50)]
    devbox_runs: usize,
    /// Skip the devbox figures.
    #[arg(long)]
    no_devboxes: bool,
    /// Rounds of the devbox disk figures (suspend/resume, create from a snapshot).
    #[arg(long, default_value_t = 5)]
    disk_rounds: usize,
    #[arg(long)]
    no_disks: bool,
    /// Rounds of the blueprint figures (a build with `RUN pip install`, first and cached).
    #[arg(long, default_value_t = 3)]
    blueprint_rounds: usize,
    #[arg(long)]
    no_blueprints: bool,
    /// Only the devbox tunnel and stdin figures (`devbox_runtime`), on a server of their own.
    #[arg(long)]
    only_devbox_runtime: bool,
    /// Only the devbox create/exec/file figures (`devboxes`), on a server of their own.
    #[arg(long)]
    only_devboxes: bool,
    /// Invocations recorded before the dashboard's pages are timed (0 skips them).
    #[arg(long, default_value_t = 100_000)]
    dashboard_invocations: usize,
    /// Skip the peer columns (Celery on Redis, FastAPI under uvicorn).
    #[arg(long)]
    no_peers: bool,
    /// Also measure warm p50 and throughput on a server using a fresh database made in this
    /// PostgreSQL (dropped afterwards), and print PostgreSQL's cost over SQLite.
    #[arg(long)]
    postgres_url: Option<String>,
    /// With --postgres-url: the cluster figures (throughput with one, two and three nodes on
    /// one database, and the time from a node's death to its runs being taken over).
    #[arg(long)]
    cluster: bool,
    /// Only the cluster figures (needs --postgres-url).
    #[arg(long)]
    only_cluster: bool,
    /// The nodes' lease in the cluster figures, in seconds (the server's default is 15).
    #[arg(long, default_value_t = 5)]
    cluster_lease_seconds: u64,
}

/// Invocations `running` now, counted a page of 1,000 at a time.
/// How long each of the many sleeping runs sleeps: longer than starting all of them takes
/// (each run's process is forked and isolated for it, a few hundred a second here).
const SLEEPER_SECONDS: f64 = 90.0;

async fn count_running(b: &harness::Bench) -> Result<usize> {
    let mut n = 0;
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/functions/invocations?status=running&limit=1000".to_string();
        if let Some(a) = &after {
            path.push_str(&format!("&starting_after={a}"));
        }
        let page = b.get(&path).await?;
        let ids: Vec<&str> = page["invocations"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v["id"].as_str()).collect())
            .unwrap_or_default();
        n += ids.len();
        match ids.last() {
            Some(last) if ids.len() == 1000 => after = Some(last.to_string()),
            _ => return Ok(n),
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // On SIGINT or SIGTERM the run is dropped, so every guard stops what it started: the
    // servers, the peers (which are in process groups of their own and would not see a
    // terminal's Ctrl-C) and the PostgreSQL database.
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = run(args) => r,
        _ = int.recv() => bail!("interrupted; everything the benchmark started is stopped"),
        _ = term.recv() => bail!("terminated; everything the benchmark started is stopped"),
    }
}

async fn run(args: Args) -> Result<()> {
    let agent = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("agent");
    if args.only_cluster {
        let admin = args
            .postgres_url
            .as_deref()
            .context("--only-cluster needs --postgres-url")?;
        let mut figures = serde_json::Map::new();
        cluster::measure(admin, &agent, &args, &mut figures).await?;
        println!("{}", Value::Object(figures));
        return Ok(());
    }
    if args.only_devbox_runtime || args.only_devboxes {
        let b = Bench {
            s: start_server(16).await?,
            http: http_client()?,
        };
        let mut figures = serde_json::Map::new();
        let measured = if args.only_devboxes {
            devboxes::measure(&b, args.devbox_runs).await?
        } else {
            devbox_runtime::measure(&b, args.devbox_runs * 20).await?
        };
        for (name, value, unit) in measured {
            println!("{name:<48} {:>14}", format!("{value:.2} {unit}"));
            figures.insert(name, json!((value * 100.0).round() / 100.0));
        }
        println!("{}", Value::Object(figures));
        return Ok(());
    }
    // Made first, so a machine that cannot run the peers fails before the long part.
    let peer_env = if args.no_peers {
        None
    } else {
        let cache = bin_dir()?.parent().context("no target dir")?.to_path_buf();
        Some(peers::prepare(&cache)?)
    };
    let server = start_server(args.sleepers).await?;
    let b = Bench {
        s: server,
        http: http_client()?,
    };
    let mut figures = serde_json::Map::new();
    let mut table: Vec<(String, String)> = Vec::new();
    let mut put = |name: &str, value: f64, unit: &str| {
        figures.insert(name.to_string(), json!((value * 100.0).round() / 100.0));
        eprintln!("  {name}: {value:.2} {unit}");
        table.push((name.to_string(), format!("{value:.2} {unit}")));
    };

    let first_deploy = b.deploy(&agent).await?;
    put("deploy_first_s", first_deploy.as_secs_f64(), "s");
    put("cold_first_call_ms", ms(b.echo().await?), "ms");

    stages::reset(&b).await?;
    let lat = latencies(args.calls, || b.echo()).await?;
    for (stage, p50, _) in stages::report(&b).await? {
        put(&format!("stage_{stage}_p50_us"), p50, "us");
    }
    let openloop = peers::CallFigures {
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        per_s: throughput(args.clients, args.throughput_seconds, || b.echo()).await?,
    };
    put("invoke_sync_warm_p50_ms", openloop.p50_ms, "ms");
    let greet = latencies(args.calls.min(500), || b.greet()).await?;
    put(
        "invoke_sync_coordinator_p50_ms",
        percentile(&greet, 0.5),
        "ms",
    );
    if !args.no_devboxes {
        // The first call may build the devbox image.
        b.example_agent().await?;
        let example = latencies(args.devbox_runs, || b.example_agent()).await?;
        put(
            "invoke_sync_seed_example_p50_ms",
            percentile(&example, 0.5),
            "ms",
        );
    }
    put("invoke_sync_warm_p99_ms", openloop.p99_ms, "ms");
    put(
        &format!("invoke_sync_throughput_{}_clients_per_s", args.clients),
        openloop.per_s,
        "runs/s",
    );

    // What creating and ending a run's process costs by itself, while this server idles.
    let floor = {
        let (data, agent) = (b.s.data_dir().to_path_buf(), agent.clone());
        tokio::task::spawn_blocking(move || process_floor::measure(&data, &agent)).await??
    };
    for (name, value, unit) in floor.figures() {
        put(name, value, unit);
    }

    // The peers run now, one at a time, while this server idles: the same calls and clients,
    // on the same machine, minutes apart at most.
    let peer_figures = match &peer_env {
        Some(env) => {
            eprintln!("  peers: Celery (Redis broker and backend, prefork worker of 2)");
            let celery =
                peers::celery(env, args.calls, args.clients, args.throughput_seconds).await?;
            eprintln!(
                "  celery: p50 {:.2} ms, p99 {:.2} ms, {:.2} calls/s",
                celery.p50_ms, celery.p99_ms, celery.per_s
            );
            eprintln!("  peers: FastAPI under uvicorn (one worker)");
            let fastapi =
                peers::fastapi(env, args.calls, args.clients, args.throughput_seconds).await?;
            eprintln!(
                "  fastapi: p50 {:.2} ms, p99 {:.2} ms, {:.2} requests/s",
                fastapi.p50_ms, fastapi.p99_ms, fastapi.per_s
            );
            Some((celery, fastapi))
        }
        None => None,
    };

    // The same warm figures on PostgreSQL, while the SQLite server idles.
    let pg_figures = match &args.postgres_url {
        Some(admin) => {
            eprintln!("  postgres: a fresh database, a second server, the same calls");
            let db = postgres::Database::create(admin).await?;
            let pb = Bench {
                s: start_server_in(tempfile::tempdir()?, args.sleepers, Some(&db.url)).await?,
                http: http_client()?,
            };
            pb.deploy(&agent).await?;
            pb.echo().await?;
            stages::reset(&pb).await?;
            let lat = latencies(args.calls, || pb.echo()).await?;
            for (stage, p50, _) in stages::report(&pb).await? {
                put(&format!("postgres_stage_{stage}_p50_us"), p50, "us");
            }
            let per_s = throughput(args.clients, args.throughput_seconds, || pb.echo()).await?;
            // The server goes before its database.
            drop(pb);
            drop(db);
            put(
                "postgres_invoke_sync_warm_p50_ms",
                percentile(&lat, 0.5),
                "ms",
            );
            put(
                &format!(
                    "postgres_invoke_sync_throughput_{}_clients_per_s",
                    args.clients
                ),
                per_s,
                "runs/s",
            );
            Some((percentile(&lat, 0.5), per_s))
        }
        None => None,
    };

    let mut async_lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let v = b
            .post(
                "/v1/functions/bench/echo/invoke_async",
                json!({"request": {"text": "hi"}}),
            )
            .await?;
        let id = v["id"].as_str().context("id")?.to_string();
        b.wait_for_end(&format!("/v1/functions/invocations/{id}/logs/stream"))
            .await?;
        async_lat.push(ms(t.elapsed()));
    }
    async_lat.sort_by(|a, b| a.total_cmp(b));
    put(
        "invoke_async_to_completed_p50_ms",
        percentile(&async_lat, 0.5),
        "ms",
    );

    // Many long runs at once: all admitted, memory of the server and every child.
    let t = Instant::now();
    let admits = (0..args.sleepers).map(|_| {
        b.post(
            "/v1/functions/bench/sleep/invoke_async",
            json!({"request": {"seconds": SLEEPER_SECONDS}}),
        )
    });
    // A bounded number in flight: thousands of simultaneous connects overflow the listen
    // backlog and measure the client's retries, not admission.
    let admitted: Vec<Value> = futures::stream::iter(admits)
        .buffer_unordered(256)
        .try_collect()
        .await?;
    let admit_time = t.elapsed();
    // Admitted is not running: a run is recorded `running` once it has a slot, and its
    // process may still be waiting for a spare. Count the runs' processes themselves (every
    // `runloop._host` process under the server but its warm process; up to six of them are
    // spares, ready for the next runs).
    let deadline = t + Duration::from_secs_f64(SLEEPER_SECONDS * 0.8);
    let server_pid = b.s.child.id();
    let mut most = 0;
    loop {
        let n = harness::tree_count(server_pid, "runloop._host").saturating_sub(1);
        most = most.max(n);
        if n >= args.sleepers || Instant::now() > deadline {
            put("sleepers_processes_alive", most as f64, "procs");
            put("sleepers_all_alive_s", t.elapsed().as_secs_f64(), "s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    put(
        "sleepers_recorded_running",
        count_running(&b).await? as f64,
        "runs",
    );
    put("sleepers_admitted", admitted.len() as f64, "runs");
    put("sleepers_admit_s", admit_time.as_secs_f64(), "s");
    put(
        "sleepers_total_pss_mib",
        tree_pss_kb(b.s.child.id()) as f64 / 1024.0,
        "MiB",
    );

    let redeploy = b.deploy(&agent).await?;
    put(
        "redeploy_unchanged_requirements_s",
        redeploy.as_secs_f64(),
        "s",
    );

    if !args.no_devboxes {
        for (name, value, unit) in devboxes::measure(&b, args.devbox_runs).await? {
            put(&name, value, unit);
        }
        for (name, value, unit) in devbox_runtime::measure(&b, args.devbox_runs * 20).await? {
            put(&name, value, unit);
        }
    }

    // How the sleepers ended: each must succeed (a run that never started, or whose warm
    // process died under it, fails).
    let ids: Vec<String> = admitted
        .iter()
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(240);
    let succeeded = loop {
        let statuses: Vec<String> = futures::stream::iter(ids.iter().map(|id| {
            let b = &b;
            async move {
                let v = b.get(&format!("/v1/functions/invocations/{id}")).await?;
                Ok::<_, anyhow::Error>(v["status"].as_str().unwrap_or("").to_string())
            }
        }))
        .buffer_unordered(64)
        .try_collect()
        .await?;
        let ended = statuses
            .iter()
            .filter(|s| *s != "running" && *s != "queued")
            .count();
        if ended == ids.len() || Instant::now() > deadline {
            break statuses.iter().filter(|s| *s == "success").count();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    put("sleepers_succeeded", succeeded as f64, "runs");

    if !args.no_disks {
        for (name, value, unit) in disks::measure(&b, args.disk_rounds).await? {
            put(&name, value, unit);
        }
    }

    if !args.no_blueprints {
        for (name, value, unit) in blueprints::measure(&b, args.blueprint_rounds).await? {
            put(&name, value, unit);
        }
    }

    if args.dashboard_invocations > 0 {
        drop(b);
        let data = tempfile::tempdir()?;
        let (detail, middle) = dashboard::seed(data.path(), args.dashboard_invocations).await?;
        let s = start_server_in(data, 16, None).await?;
        let cookie = dashboard::sign_in(&s.url, &s.key).await?;
        let mut worst: f64 = 0.0;
        for (page, p50, p95) in dashboard::time_pages(&s.url, &cookie, &detail, &middle).await? {
            put(&format!("dashboard_{page}_p50_ms"), p50, "ms");
            worst = worst.max(p95);
        }
        put(
            &format!(
                "dashboard_slowest_page_p95_ms_{}k_invocations",
                args.dashboard_invocations / 1000
            ),
            worst,
            "ms",
        );
    }

    println!("{:<48} {:>14}", "figure", "value");
    for (name, value) in &table {
        println!("{name:<48} {value:>14}");
    }
    if let Some((celery, fastapi)) = peer_figures {
        peers::report(openloop, celery, fastapi, args.clients, &mut figures);
    }
    floor.report(
        peer_figures.map(|(celery, _)| celery.per_s),
        args.sleepers,
        &mut figures,
    );
    if let Some(pg) = pg_figures {
        postgres::report(
            (openloop.p50_ms, openloop.per_s),
            pg,
            args.clients,
            &mut figures,
        );
    }
    if args.cluster {
        if let Some(admin) = &args.postgres_url {
            cluster::measure(admin, &agent, &args, &mut figures).await?;
        }
    }
    println!("{}", Value::Object(figures));
    Ok(())
}
