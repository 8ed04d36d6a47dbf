//! `--cluster` (with `--postgres-url`): Openloop on one, two and three nodes sharing a fresh
//! PostgreSQL database, all on this machine: the throughput of warm `invoke_sync` with the
//! clients spread over the nodes, and the time from one node's SIGKILL to its runs being
//! taken over by another.
//!
//! On one machine the nodes share its cores, so more nodes do not mean more throughput: the
//! figures show what coordinating through the database costs, not how a cluster of machines
//! scales.

use crate::postgres::Database;
use crate::{http_client, start_node, throughput, Args, Bench};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

pub async fn measure(
    admin: &str,
    agent: &Path,
    args: &Args,
    figures: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let secrets_key = {
        use base64::Engine;
        let mut b = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let lease = args.cluster_lease_seconds.max(1).to_string();
    let env = [
        ("OPENLOOP_SECRETS_KEY", secrets_key.as_str()),
        ("OPENLOOP_NODE_LEASE_SECONDS", lease.as_str()),
        ("OPENLOOP_DEVBOX_WARM_POOL", "0"),
    ];
    let db = Database::create(admin).await?;
    let mut nodes: Vec<Bench> = Vec::new();
    let mut rows = Vec::new();
    for n in 1..=3usize {
        let key = nodes.first().map(|b| b.s.key.clone());
        let node = Bench {
            s: start_node(tempfile::tempdir()?, Some(&db.url), &[], &env, key).await?,
            http: http_client()?,
        };
        if n == 1 {
            node.deploy(agent).await?;
        }
        // Each node builds the deployment on its first run of it.
        node.echo().await?;
        nodes.push(node);
        let turn = std::sync::atomic::AtomicUsize::new(0);
        let per_s = throughput(args.clients, args.throughput_seconds, || {
            let i = turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % nodes.len();
            nodes[i].echo()
        })
        .await?;
        eprintln!("  cluster: {n} node(s), {per_s:.2} runs/s");
        figures.insert(
            format!("cluster_{n}_nodes_throughput_per_s"),
            json!((per_s * 100.0).round() / 100.0),
        );
        rows.push((n, per_s));
    }
    let takeover = takeover(&mut nodes).await?;
    figures.insert(
        "cluster_takeover_s".into(),
        json!((takeover.as_secs_f64() * 100.0).round() / 100.0),
    );
    figures.insert(
        "cluster_lease_s".into(),
        json!(args.cluster_lease_seconds.max(1)),
    );
    drop(nodes);
    drop(db);
    println!();
    println!(
        "cluster on one machine ({} clients spread over the nodes; the nodes share its cores)",
        args.clients
    );
    for (n, per_s) in rows {
        println!(
            "{:<48} {:>14}",
            format!("{n} node(s): throughput"),
            format!("{per_s:.2} runs/s")
        );
    }
    println!(
        "{:<48} {:>14}",
        format!(
            "takeover after SIGKILL (lease {} s)",
            args.cluster_lease_seconds.max(1)
        ),
        format!("{:.2} s", takeover.as_secs_f64())
    );
    Ok(())
}

/// Kill the last node with SIGKILL while it runs a sleeper; the time until another node has
/// recorded that run's end (`NodeLost`).
async fn takeover(nodes: &mut Vec<Bench>) -> Result<Duration> {
    let victim = nodes.pop().context("no node to kill")?;
    let watcher = nodes.first().context("no node left to watch")?;
    let inv = victim
        .post(
            "/v1/functions/bench/sleep/invoke_async",
            json!({"request": {"seconds": 600}}),
        )
        .await?;
    let id = inv["id"].as_str().context("invocation id")?.to_string();
    let started = Instant::now() + Duration::from_secs(30);
    loop {
        let v = watcher
            .get(&format!("/v1/functions/invocations/{id}"))
            .await?;
        if v["status"] == "running" {
            break;
        }
        if Instant::now() > started {
            bail!("the sleeper did not start on the victim node: {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = Instant::now();
    crate::unsafe_kill(victim.s.child.id(), 9);
    drop(victim);
    let deadline = killed + Duration::from_secs(120);
    loop {
        let v = watcher
            .get(&format!("/v1/functions/invocations/{id}"))
            .await?;
        if v["status"] == "failure" {
            if v["error"]["type"] != "NodeLost" {
                bail!("the killed node's run ended otherwise: {v}");
            }
            return Ok(killed.elapsed());
        }
        if Instant::now() > deadline {
            bail!("the killed node's run was not taken over: {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
