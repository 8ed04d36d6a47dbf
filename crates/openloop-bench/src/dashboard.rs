//! Dashboard figures: every page's HTML answer time with a large recorded history.
//!
//! A fresh data directory is filled with `n` invocations (through the store, in one
//! transaction) before its server starts; the benchmark then signs in like a browser and times
//! each page.

use anyhow::{bail, Context, Result};
use openloop_store::invocations::Invocation;
use openloop_store::Store;
use std::time::Instant;

/// Times each page is fetched.
const ROUNDS: usize = 20;

/// Fill `data_dir`'s database with `n` finished invocations of project `bench` (a mix of
/// statuses; function `rare` is one in a thousand), plus one with 200 log lines and 5
/// children. Returns (the detailed one's id, an id in the middle of the history).
pub async fn seed(data_dir: &std::path::Path, n: usize) -> Result<(String, String)> {
    let store = Store::connect(&Store::sqlite_url(&data_dir.join("openloop.db"))).await?;
    let now = openloop_store::now_ms();
    let mut batch = Vec::with_capacity(10_000);
    let mut middle = String::new();
    for i in 0..n {
        let id = openloop_store::new_id("inv");
        if i == n / 2 {
            middle = id.clone();
        }
        let status = match i % 100 {
            0 => "failure",
            1 => "canceled",
            _ => "success",
        };
        let created = now - (n - i) as i64 * 1000;
        batch.push(Invocation {
            id,
            project_name: "bench".into(),
            function_name: if i % 1000 == 7 { "rare" } else { "echo" }.into(),
            deployment_id: "dpl_bench".into(),
            status: status.into(),
            request: r#"{"text": "hello"}"#.into(),
            result: (status == "success").then(|| r#""hello""#.into()),
            error: (status != "success").then(|| {
                r#"{"type": "ValueError", "message": "bad", "traceback": "Traceback ..."}"#.into()
            }),
            parent_invocation_id: None,
            created_at_ms: created,
            started_at_ms: Some(created + 2),
            ended_at_ms: Some(created + 9),
        });
        if batch.len() == 10_000 {
            store.insert_invocations(&batch).await?;
            batch.clear();
        }
    }
    store.insert_invocations(&batch).await?;
    // One with logs and children, for the detail page.
    let parent = openloop_store::new_id("inv");
    let mut family = vec![Invocation {
        id: parent.clone(),
        project_name: "bench".into(),
        function_name: "echo".into(),
        deployment_id: "dpl_bench".into(),
        status: "success".into(),
        request: "{}".into(),
        result: Some("1".into()),
        error: None,
        parent_invocation_id: None,
        created_at_ms: now,
        started_at_ms: Some(now),
        ended_at_ms: Some(now + 5),
    }];
    for _ in 0..5 {
        let mut child = family[0].clone();
        child.id = openloop_store::new_id("inv");
        child.parent_invocation_id = Some(parent.clone());
        family.push(child);
    }
    store.insert_invocations(&family).await?;
    let lines: Vec<_> = (0..200)
        .map(|i| openloop_store::invocations::InvocationLog {
            seq: i,
            ts_ms: now,
            stream: "stdout".into(),
            level: None,
            message: format!("line {i}"),
        })
        .collect();
    store.append_invocation_logs(&parent, 1, &lines).await?;
    Ok((parent, middle))
}

fn set_cookie_value(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|c| c.split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

/// Sign in as a browser does; returns the `Cookie` header of the session.
pub async fn sign_in(url: &str, key: &str) -> Result<String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = http.get(format!("{url}/ui/login")).send().await?;
    let login = set_cookie_value(&page, "openloop_login").context("no sign-in cookie")?;
    let html = page.text().await?;
    let token = html
        .split("name=\"login_token\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("no sign-in token in the form")?
        .to_string();
    let resp = http
        .post(format!("{url}/ui/login"))
        .header("Cookie", format!("openloop_login={login}"))
        .form(&[("key", key), ("login_token", &token), ("next", "/ui/keys")])
        .send()
        .await?;
    let session = set_cookie_value(&resp, "openloop_session").context("sign-in failed")?;
    Ok(format!("openloop_session={session}"))
}

/// `(page, p50 ms, p95 ms)` for each page.
pub async fn time_pages(
    url: &str,
    cookie: &str,
    detail: &str,
    middle: &str,
) -> Result<Vec<(String, f64, f64)>> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let pages = [
        ("invocations", "/ui/invocations".to_string()),
        (
            "invocations_failed",
            "/ui/invocations?status=failure".into(),
        ),
        (
            "invocations_rare_function",
            "/ui/invocations?project=bench&function=rare".into(),
        ),
        (
            "invocations_canceled_echo",
            "/ui/invocations?project=bench&function=echo&status=canceled".into(),
        ),
        (
            "invocations_page_in_the_middle",
            format!("/ui/invocations?before={middle}"),
        ),
        ("invocations_live_rows", "/ui/invocations/rows".into()),
        ("invocation_detail", format!("/ui/invocations/{detail}")),
        ("deployments", "/ui/deployments".into()),
        ("functions", "/ui/projects".into()),
        ("devboxes", "/ui/devboxes".into()),
        ("keys", "/ui/keys".into()),
    ];
    let mut out = Vec::new();
    for (name, path) in pages {
        let mut times = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let r = http
                .get(format!("{url}{path}"))
                .header("Cookie", cookie)
                .send()
                .await?;
            let status = r.status();
            let body = r.bytes().await?;
            if !status.is_success() || body.is_empty() {
                bail!("{path} answered {status}");
            }
            times.push(crate::ms(t.elapsed()));
        }
        times.sort_by(|a, b| a.total_cmp(b));
        out.push((
            name.to_string(),
            crate::percentile(&times, 0.5),
            crate::percentile(&times, 0.95),
        ));
    }
    Ok(out)
}
