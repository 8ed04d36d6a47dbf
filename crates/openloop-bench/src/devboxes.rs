//! Devbox figures: create → first `execute_sync` finished, `execute_sync` of `true`, and a
//! 10 MB file written then read back, each over `runs` fresh devboxes.

use crate::devbox_runtime::Figure;
use crate::{ms, percentile, Bench};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::time::Instant;

/// Time `runs` devboxes: create to first exec, 20 `true` execs each, one 10 MB write+read.
pub async fn measure(b: &Bench, runs: usize) -> Result<Vec<Figure>> {
    let mut create = Vec::new();
    let mut exec = Vec::new();
    let mut files = Vec::new();
    let ten_mb = "x".repeat(10 << 20);
    for _ in 0..runs {
        let t = Instant::now();
        let d = b.post("/v1/devboxes", json!({})).await?;
        let id = d["id"].as_str().context("devbox id")?.to_string();
        b.post(
            &format!("/v1/devboxes/{id}/execute_sync"),
            json!({"command": "true"}),
        )
        .await?;
        create.push(ms(t.elapsed()));
        for _ in 0..20 {
            let t = Instant::now();
            b.post(
                &format!("/v1/devboxes/{id}/execute_sync"),
                json!({"command": "true"}),
            )
            .await?;
            exec.push(ms(t.elapsed()));
        }
        let t = Instant::now();
        b.post(
            &format!("/v1/devboxes/{id}/write_file_contents"),
            json!({"file_path": "ten.txt", "contents": ten_mb}),
        )
        .await?;
        let r = b
            .http
            .post(format!("{}/v1/devboxes/{id}/read_file_contents", b.s.url))
            .bearer_auth(&b.s.key)
            .json(&json!({"file_path": "ten.txt"}))
            .send()
            .await?
            .bytes()
            .await?;
        if r.len() != ten_mb.len() {
            bail!("read back {} bytes", r.len());
        }
        files.push(ms(t.elapsed()));
        b.post(&format!("/v1/devboxes/{id}/shutdown"), json!({}))
            .await?;
    }
    for v in [&mut create, &mut exec, &mut files] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    Ok(vec![
        (
            "devbox_create_to_first_exec_p50_ms".into(),
            percentile(&create, 0.5),
            "ms",
        ),
        (
            "devbox_execute_sync_true_p50_ms".into(),
            percentile(&exec, 0.5),
            "ms",
        ),
        (
            "devbox_10mb_write_then_read_p50_ms".into(),
            percentile(&files, 0.5),
            "ms",
        ),
    ])
}
