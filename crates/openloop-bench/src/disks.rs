//! Devbox disk figures: suspend and resume of a devbox with 100 MB written, a disk snapshot
//! of a devbox with 1 GB written, and creating a devbox from a snapshot up to its first
//! command.

use crate::{ms, percentile, Bench};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::time::Instant;

/// Run the series (`rounds` each for the p50s); returns `(figure, value, unit)`.
pub async fn measure(b: &Bench, rounds: usize) -> Result<Vec<(String, f64, &'static str)>> {
    let rounds = rounds.max(1);
    let mut out = Vec::new();
    let exec = |id: String, command: &'static str| async move {
        let r = b
            .post(
                &format!("/v1/devboxes/{id}/execute_sync"),
                json!({ "command": command }),
            )
            .await?;
        if r["exit_status"] != 0 {
            bail!("{command}: {r}");
        }
        Ok::<_, anyhow::Error>(r)
    };

    // Suspend → resume with 100 MB on the devbox's disk.
    let d = b.post("/v1/devboxes", json!({})).await?;
    let id = d["id"].as_str().context("devbox id")?.to_string();
    exec(id.clone(), "head -c 104857600 /dev/urandom > data.bin").await?;
    let (mut suspend, mut resume, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let v = b
            .post(&format!("/v1/devboxes/{id}/suspend"), json!({}))
            .await?;
        if v["status"] != "suspended" {
            bail!("suspend: {v}");
        }
        let suspended = t.elapsed();
        let v = b
            .post(&format!("/v1/devboxes/{id}/resume"), json!({}))
            .await?;
        if v["status"] != "running" {
            bail!("resume: {v}");
        }
        exec(id.clone(), "test $(stat -c %s data.bin) = 104857600").await?;
        let total = t.elapsed();
        suspend.push(ms(suspended));
        resume.push(ms(total - suspended));
        both.push(ms(total));
    }
    b.post(&format!("/v1/devboxes/{id}/shutdown"), json!({}))
        .await?;
    for v in [&mut suspend, &mut resume, &mut both] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    out.push((
        "devbox_suspend_100mb_p50_ms".into(),
        percentile(&suspend, 0.5),
        "ms",
    ));
    out.push((
        "devbox_resume_100mb_to_first_exec_p50_ms".into(),
        percentile(&resume, 0.5),
        "ms",
    ));
    out.push((
        "devbox_suspend_then_resume_100mb_p50_ms".into(),
        percentile(&both, 0.5),
        "ms",
    ));

    // A snapshot of a running devbox with 1 GB written.
    let d = b.post("/v1/devboxes", json!({})).await?;
    let id = d["id"].as_str().context("devbox id")?.to_string();
    exec(
        id.clone(),
        "head -c 1073741824 /dev/urandom > gig.bin && sync",
    )
    .await?;
    let t = Instant::now();
    let snap = b
        .post(
            &format!("/v1/devboxes/{id}/snapshot_disk"),
            json!({"name": "bench"}),
        )
        .await?;
    let took = t.elapsed();
    if snap["size_bytes"].as_i64().unwrap_or(0) < 1 << 30 {
        bail!("snapshot: {snap}");
    }
    out.push(("devbox_snapshot_1gb_s".into(), took.as_secs_f64(), "s"));
    b.post(&format!("/v1/devboxes/{id}/shutdown"), json!({}))
        .await?;
    let snap_id = snap["id"].as_str().context("snapshot id")?.to_string();

    // Create from that snapshot → first command.
    let mut create = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let d = b
            .post("/v1/devboxes", json!({ "snapshot_id": snap_id }))
            .await?;
        let id = d["id"].as_str().context("devbox id")?.to_string();
        exec(id.clone(), "test -s gig.bin").await?;
        create.push(ms(t.elapsed()));
        b.post(&format!("/v1/devboxes/{id}/shutdown"), json!({}))
            .await?;
    }
    create.sort_by(|a, b| a.total_cmp(b));
    out.push((
        "devbox_create_from_snapshot_to_first_exec_p50_ms".into(),
        percentile(&create, 0.5),
        "ms",
    ));
    b.post(
        &format!("/v1/devboxes/disk_snapshots/{snap_id}/delete"),
        json!({}),
    )
    .await?;
    Ok(out)
}
