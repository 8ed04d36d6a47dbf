//! The per-stage breakdown of warm invocations, read from the server's stage spans
//! (`GET /v1/metrics/stages`, `openloop_api::stages`).

use anyhow::Result;
use serde_json::Value;

/// Clear the server's stage figures before a measured series.
pub async fn reset(b: &crate::Bench) -> Result<()> {
    b.post("/v1/metrics/stages/reset", serde_json::json!({}))
        .await?;
    Ok(())
}

/// Print the figures of the series since `reset`, in path order, and return them as
/// `(stage, p50 µs, mean µs)`.
pub async fn report(b: &crate::Bench) -> Result<Vec<(String, f64, f64)>> {
    let v: Value = b.get("/v1/metrics/stages").await?;
    let mut out = Vec::new();
    eprintln!("  per-stage breakdown of the warm invoke_sync series (server spans, µs):");
    eprintln!(
        "    {:<14} {:>8} {:>10} {:>10} {:>10}",
        "stage", "count", "p50", "p99", "mean"
    );
    for s in v["stages"].as_array().cloned().unwrap_or_default() {
        let name = s["stage"].as_str().unwrap_or("?").to_string();
        let p50 = s["p50_us"].as_f64().unwrap_or(0.0);
        let mean = s["mean_us"].as_f64().unwrap_or(0.0);
        eprintln!(
            "    {:<14} {:>8} {:>10} {:>10} {:>10.0}",
            name,
            s["count"].as_u64().unwrap_or(0),
            p50,
            s["p99_us"].as_f64().unwrap_or(0.0),
            mean
        );
        out.push((name, p50, mean));
    }
    Ok(out)
}
