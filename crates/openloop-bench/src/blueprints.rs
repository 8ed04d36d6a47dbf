//! Blueprint figures: a build with one offline `RUN pip install` (a small package copied
//! from the build context, no network), first and cached (identical content reuses the
//! layer), and creating a devbox from a blueprint next to one of the same shape from the
//! base image.

use crate::{ms, percentile, Bench};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The blueprint body of round `n` (a comment makes every round's content its own).
fn pip_blueprint(name: &str, n: usize) -> Value {
    json!({
        "name": name,
        "dockerfile": "FROM openloop-base\nCOPY pkg /ctx/pkg\nRUN pip install --break-system-packages --no-index --no-build-isolation /ctx/pkg\n",
        "file_mounts": {
            "pkg/pyproject.toml": "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"benchpkg\"\nversion = \"1.0\"\n",
            "pkg/benchpkg/__init__.py": format!("# round {n}\nVALUE = 1\n"),
        },
    })
}

/// Create a blueprint and poll (every 10 ms) until its build ends; the wall time.
async fn build(b: &Bench, body: Value) -> Result<(String, Duration)> {
    let t = Instant::now();
    let v = b.post("/v1/blueprints", body).await?;
    let id = v["id"].as_str().context("blueprint id")?.to_string();
    loop {
        let v = b.get(&format!("/v1/blueprints/{id}")).await?;
        match v["status"].as_str() {
            Some("build_complete") => return Ok((id, t.elapsed())),
            Some("queued" | "building") => tokio::time::sleep(Duration::from_millis(10)).await,
            _ => {
                let logs = b.get(&format!("/v1/blueprints/{id}/logs")).await?;
                bail!("blueprint build failed: {v} {logs}");
            }
        }
    }
}

/// Run the series (`rounds` each); returns `(figure, value, unit)`.
pub async fn measure(b: &Bench, rounds: usize) -> Result<Vec<(String, f64, &'static str)>> {
    let rounds = rounds.max(1);
    let (mut first, mut cached) = (Vec::new(), Vec::new());
    let mut last = String::new();
    for n in 0..rounds {
        let (id, took) = build(b, pip_blueprint("bench-pip", n)).await?;
        first.push(took.as_secs_f64());
        let (_, took) = build(b, pip_blueprint("bench-pip-again", n)).await?;
        cached.push(took.as_secs_f64());
        last = id;
    }
    // The same shape (not the warm pool's) from the base image and from the blueprint, up
    // to the first command.
    let shape = json!({"custom_cpu_cores": 2});
    let (mut base, mut from_blueprint) = (Vec::new(), Vec::new());
    for _ in 0..rounds * 4 {
        for (series, body, check) in [
            (
                &mut base,
                json!({"launch_parameters": shape}),
                "python3 -c 'import sys'",
            ),
            (
                &mut from_blueprint,
                json!({"blueprint_id": last, "launch_parameters": shape}),
                "python3 -c 'import benchpkg'",
            ),
        ] {
            let t = Instant::now();
            let d = b.post("/v1/devboxes", body).await?;
            let id = d["id"].as_str().context("devbox id")?.to_string();
            let r = b
                .post(
                    &format!("/v1/devboxes/{id}/execute_sync"),
                    json!({ "command": check }),
                )
                .await?;
            if r["exit_status"] != 0 {
                bail!("{check}: {r}");
            }
            series.push(ms(t.elapsed()));
            b.post(&format!("/v1/devboxes/{id}/shutdown"), json!({}))
                .await?;
        }
    }
    for v in [&mut first, &mut cached, &mut base, &mut from_blueprint] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    Ok(vec![
        (
            "blueprint_build_pip_install_first_p50_s".into(),
            percentile(&first, 0.5),
            "s",
        ),
        (
            "blueprint_build_pip_install_cached_p50_s".into(),
            percentile(&cached, 0.5),
            "s",
        ),
        (
            "devbox_create_to_first_exec_base_image_p50_ms".into(),
            percentile(&base, 0.5),
            "ms",
        ),
        (
            "devbox_create_to_first_exec_from_blueprint_p50_ms".into(),
            percentile(&from_blueprint, 0.5),
            "ms",
        ),
    ])
}
