//! The least a run's process costs: the CPU time of forking the deployment's warm process
//! into a run's namespaces, sealing it and ending it, and the private memory of such a copy
//! that does nothing, measured by `peers/process_floor.py` with the deployment's own
//! interpreter. Nothing of the server is on that path, so `cpus / that time` bounds the runs
//! a second this machine can start and end, and `runs × that memory` bounds what many
//! sleeping runs hold, whatever the engine does around them.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// Rounds of each measured loop.
const ROUNDS: usize = 1000;

pub struct Floor {
    pub bare_fork_us: f64,
    pub warm_fork_us: f64,
    pub warm_isolated_us: f64,
    /// Private memory of one such copy waiting, having done nothing else (KiB).
    pub idle_private_kib: f64,
    /// `cpus / warm_isolated_us`: runs a second if process creation were all a run cost.
    pub ceiling_per_s: f64,
}

/// Measure with the interpreter of the deployment the server at `data_dir` built for the
/// benchmark's agent (`agent/`, module `bench`).
pub fn measure(data_dir: &Path, agent: &Path) -> Result<Floor> {
    let venvs = data_dir.join("venvs");
    let python = std::fs::read_dir(&venvs)
        .with_context(|| format!("reading {}", venvs.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/python"))
        .find(|p| p.exists())
        .context("the deployment's venv has no interpreter")?;
    let script = agent
        .parent()
        .context("agent dir")?
        .join("peers/process_floor.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(agent.join("bench_agent"))
        .arg("bench")
        .arg(ROUNDS.to_string())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("process_floor.py's output")?;
    let get = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("{k} missing from {v}"))
    };
    let warm_isolated_us = get("warm_isolated_us")?;
    Ok(Floor {
        bare_fork_us: get("bare_fork_us")?,
        warm_fork_us: get("warm_fork_us")?,
        warm_isolated_us,
        idle_private_kib: get("warm_isolated_idle_private_kib")?,
        ceiling_per_s: get("cpus")? / (warm_isolated_us / 1e6),
    })
}

impl Floor {
    /// The figures of the table: `(name, value, unit)`.
    pub fn figures(&self) -> [(&'static str, f64, &'static str); 5] {
        [
            ("process_floor_bare_fork_us", self.bare_fork_us, "us"),
            ("process_floor_warm_fork_us", self.warm_fork_us, "us"),
            (
                "process_floor_warm_isolated_us",
                self.warm_isolated_us,
                "us",
            ),
            (
                "process_floor_ceiling_runs_per_s",
                self.ceiling_per_s,
                "runs/s",
            ),
            (
                "process_floor_idle_private_kib",
                self.idle_private_kib,
                "KiB",
            ),
        ]
    }

    /// Print what the floor means for the targets: the ceiling against Celery's throughput
    /// (when the peers ran) and the least `sleepers` sleeping runs hold; add both to the
    /// JSON line.
    pub fn report(
        &self,
        celery_per_s: Option<f64>,
        sleepers: usize,
        figures: &mut serde_json::Map<String, Value>,
    ) {
        if let Some(celery) = celery_per_s {
            let ceiling = self.ceiling_per_s / celery;
            println!(
                "process floor: {:.0} us of CPU per run's process before any of its work; at most {:.0} runs/s on this machine, {ceiling:.2} x Celery's throughput",
                self.warm_isolated_us, self.ceiling_per_s
            );
            figures.insert(
                "ratio_process_floor_ceiling_over_celery".into(),
                json!((ceiling * 1000.0).round() / 1000.0),
            );
        }
        let mib = self.idle_private_kib * sleepers as f64 / 1024.0;
        println!(
            "process floor: {:.0} KiB private per idle run's process; {sleepers} sleeping runs hold at least {mib:.0} MiB",
            self.idle_private_kib
        );
        figures.insert(
            "process_floor_sleepers_private_mib".into(),
            json!(mib.round()),
        );
    }
}
