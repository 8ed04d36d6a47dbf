//! The comparison: prints the same-run table of Openloop against the peers and the issue's
//! targets, and adds the peers' figures, ratios and target results to the JSON line.

use super::CallFigures;
use serde_json::{json, Value};

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
