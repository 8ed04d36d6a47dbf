//! Devbox tunnels and standard input: an HTTP request through a tunnel to a server inside a
//! devbox (`python3 -m http.server`), and `send_std_in` to a running `cat`, both alone and
//! until the text is back on the execution's stdout stream.

use crate::{ms, percentile, Bench};
use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};

/// `(figure, value, unit)`.
pub type Figure = (String, f64, &'static str);

/// Time `requests` tunnel requests and `requests` stdin round trips on one devbox.
pub async fn measure(b: &Bench, requests: usize) -> Result<Vec<Figure>> {
    let d = b.post("/v1/devboxes", json!({})).await?;
    let id = d["id"].as_str().context("devbox id")?.to_string();
    let result = measure_in(b, &id, requests).await;
    b.post(&format!("/v1/devboxes/{id}/shutdown"), json!({}))
        .await?;
    result
}

async fn measure_in(b: &Bench, id: &str, requests: usize) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    b.post(
        &format!("/v1/devboxes/{id}/execute_async"),
        json!({"command": "mkdir -p site && echo hello > site/index.html && cd site && python3 -m http.server 8080 --bind 127.0.0.1"}),
    )
    .await?;
    let tunnel = b
        .post(&format!("/v1/devboxes/{id}/enable_tunnel"), json!({}))
        .await?;
    let key = tunnel["tunnel_key"].as_str().context("tunnel_key")?;
    let port = b.s.url.rsplit(':').next().context("server port")?;
    let host = format!("8080-{key}.tunnel.localhost:{port}");
    let get = || async {
        let t = Instant::now();
        let r = b
            .http
            .get(format!("{}/index.html", b.s.url))
            .header(reqwest::header::HOST, &host)
            .send()
            .await?;
        let status = r.status();
        let body = r.bytes().await?;
        Ok::<_, anyhow::Error>((status, body, t.elapsed()))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, _) = get().await?;
        if status.is_success() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the server inside the devbox never answered through the tunnel: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = Vec::with_capacity(requests);
    for _ in 0..requests {
        let (status, body, took) = get().await?;
        if !status.is_success() || body.as_ref() != b"hello\n" {
            bail!("tunnel request answered {status}");
        }
        lat.push(ms(took));
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    out.push(("tunnel_http_get_p50_ms".into(), percentile(&lat, 0.5), "ms"));
    out.push((
        "tunnel_http_get_p99_ms".into(),
        percentile(&lat, 0.99),
        "ms",
    ));

    // stdin: a `cat`, its stdout followed as Server-Sent Events.
    let ex = b
        .post(
            &format!("/v1/devboxes/{id}/execute_async"),
            json!({"command": "cat", "attach_stdin": true}),
        )
        .await?;
    let eid = ex["execution_id"].as_str().context("execution_id")?;
    let mut events = b
        .http
        .get(format!(
            "{}/v1/devboxes/{id}/executions/{eid}/stream_stdout_updates",
            b.s.url
        ))
        .bearer_auth(&b.s.key)
        .send()
        .await?
        .bytes_stream();
    let mut seen = String::new();
    let (mut send_lat, mut echo_lat) = (Vec::new(), Vec::new());
    for i in 0..requests {
        let line = format!("line-{i}\n");
        let t = Instant::now();
        b.post(
            &format!("/v1/devboxes/{id}/executions/{eid}/send_std_in"),
            json!({"text": line}),
        )
        .await?;
        send_lat.push(ms(t.elapsed()));
        // Events carry the output as JSON text: the newline is escaped there.
        let echoed = format!("line-{i}\\n");
        while !seen.contains(&echoed) {
            let chunk = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .context("no output from cat within 10 s")?
                .context("the output stream ended")??;
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        echo_lat.push(ms(t.elapsed()));
        seen.clear();
    }
    for v in [&mut send_lat, &mut echo_lat] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    out.push((
        "send_std_in_p50_ms".into(),
        percentile(&send_lat, 0.5),
        "ms",
    ));
    out.push((
        "stdin_to_stdout_stream_p50_ms".into(),
        percentile(&echo_lat, 0.5),
        "ms",
    ));
    Ok(out)
}
