//! Commands that talk to a running server: `deploy`, `logs`.

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args)]
pub struct ServerArgs {
    /// Server URL (default: $OPENLOOP_URL, then the local default).
    #[arg(long, env = "OPENLOOP_URL", default_value = "http://127.0.0.1:8700")]
    pub(crate) server: String,
    /// API key (default: $OPENLOOP_API_KEY, then the local data directory's admin key).
    #[arg(long, env = "OPENLOOP_API_KEY")]
    api_key: Option<String>,
    /// Data directory whose admin key to use when no key is given.
    #[arg(long, env = "OPENLOOP_DATA_DIR", default_value = "./.openloop")]
    data_dir: PathBuf,
}

impl ServerArgs {
    pub(crate) fn key(&self) -> anyhow::Result<String> {
        if let Some(k) = &self.api_key {
            return Ok(k.clone());
        }
        let path = self.data_dir.join("admin-key");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no API key: pass --api-key, set OPENLOOP_API_KEY, or run where {} exists",
                path.display()
            )
        })?;
        Ok(text.trim().to_string())
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.server.trim_end_matches('/'), path)
    }
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder().build().expect("HTTP client")
}

pub(crate) async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let msg = body["error"]["message"].as_str().unwrap_or("no details");
    bail!("server answered {status}: {msg}")
}

#[derive(Args)]
pub struct DeployArgs {
    /// A local directory (sent as its absolute path) or a git URL.
    source: String,
    /// Git ref (branch, tag or commit) to deploy.
    #[arg(long = "ref")]
    git_ref: Option<String>,
    /// Project name (default: the repository's directory or git name).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let key = args.server.key()?;
    let local = PathBuf::from(&args.source);
    let source = if !args.source.contains("://") && local.exists() {
        local.canonicalize()?.to_string_lossy().into_owned()
    } else {
        args.source.clone()
    };
    let name = args.name.clone().or_else(|| {
        // The name comes from what the user typed, not from a resolved symlink.
        local.exists().then(|| {
            std::path::absolute(&local)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        })?
    });
    let client = http();
    let resp = client
        .post(args.server.url("/v1/deployments"))
        .bearer_auth(&key)
        .json(&json!({"source": source, "ref": args.git_ref, "name": name}))
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {}", args.server.server))?;
    let dep: Value = check(resp).await?.json().await?;
    let id = dep["id"]
        .as_str()
        .context("no deployment id in the answer")?
        .to_string();
    eprintln!(
        "deployment {id} of project {}",
        dep["project_name"].as_str().unwrap_or("?")
    );
    let resp = client
        .get(
            args.server
                .url(&format!("/v1/deployments/{id}/logs/stream")),
        )
        .bearer_auth(&key)
        .send()
        .await?;
    let mut end: Option<Value> = None;
    for_each_sse(check(resp).await?, |event, data| match event {
        "log" => println!("{data}"),
        "end" => end = serde_json::from_str(data).ok(),
        _ => {}
    })
    .await?;
    let dep = match end {
        Some(d) => d,
        None => {
            let r = client
                .get(args.server.url(&format!("/v1/deployments/{id}")))
                .bearer_auth(&key)
                .send()
                .await?;
            check(r).await?.json().await?
        }
    };
    match dep["status"].as_str() {
        Some("deployed") => {
            let fns: Vec<String> = dep["functions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "deployed {} with functions: {}",
                dep["project_name"].as_str().unwrap_or("?"),
                fns.join(", ")
            );
            Ok(())
        }
        _ => bail!(
            "deployment {id} failed: {}",
            dep["failure_reason"]
                .as_str()
                .unwrap_or("the build did not finish")
        ),
    }
}

/// Read a Server-Sent Events response, calling `f(event, data)` for each event.
async fn for_each_sse(
    resp: reqwest::Response,
    mut f: impl FnMut(&str, &str),
) -> anyhow::Result<()> {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let (mut event, mut data) = (String::new(), Vec::<String>::new());
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(pos) = buf.find('\n') {
            let line = buf[..pos].trim_end_matches('\r').to_string();
            buf.drain(..=pos);
            if line.is_empty() {
                if !data.is_empty() {
                    f(
                        if event.is_empty() { "message" } else { &event },
                        &data.join("\n"),
                    );
                }
                event.clear();
                data.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct LogsArgs {
    /// Invocation id.
    id: String,
    /// Keep following new lines until the invocation ends.
    #[arg(long, short)]
    follow: bool,
    #[command(flatten)]
    server: ServerArgs,
}

fn print_log(l: &Value) {
    let level = l["level"]
        .as_str()
        .map(|s| format!(" {s}"))
        .unwrap_or_default();
    println!(
        "{} [{}{}] {}",
        l["ts_ms"].as_i64().unwrap_or(0),
        l["stream"].as_str().unwrap_or("?"),
        level,
        l["message"].as_str().unwrap_or("")
    );
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let key = args.server.key()?;
    let client = http();
    if args.follow {
        let resp = client
            .get(args.server.url(&format!(
                "/v1/functions/invocations/{}/logs/stream",
                args.id
            )))
            .bearer_auth(&key)
            .send()
            .await?;
        return for_each_sse(check(resp).await?, |event, data| {
            if event == "log" {
                if let Ok(l) = serde_json::from_str::<Value>(data) {
                    print_log(&l);
                }
            }
        })
        .await;
    }
    let mut after = 0i64;
    loop {
        let resp = client
            .get(args.server.url(&format!(
                "/v1/functions/invocations/{}/logs?after_seq={after}",
                args.id
            )))
            .bearer_auth(&key)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", args.server.server))?;
        let page: Value = check(resp).await?.json().await?;
        for l in page["logs"].as_array().into_iter().flatten() {
            print_log(l);
        }
        after = page["next_seq"].as_i64().unwrap_or(after);
        if !page["has_more"].as_bool().unwrap_or(false) {
            return Ok(());
        }
    }
}

#[derive(clap::Args)]
pub struct NodesArgs {
    /// Print the JSON the server answers instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// `openloop nodes`: the nodes of the cluster, their heartbeats, runs and devboxes.
pub async fn nodes(args: NodesArgs) -> anyhow::Result<()> {
    let key = args.server.key()?;
    let resp = http()
        .get(args.server.url("/v1/nodes"))
        .bearer_auth(&key)
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {}", args.server.server))?;
    let list: Value = check(resp).await?.json().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<40} {:<8} {:>5} {:>10} {:>5} {:>8}  ADDRESS",
        "NODE", "STATUS", "EPOCH", "HEARTBEAT", "RUNS", "DEVBOXES"
    );
    for n in list["nodes"].as_array().into_iter().flatten() {
        let me = if n["this_node"].as_bool().unwrap_or(false) {
            " (this node)"
        } else {
            ""
        };
        println!(
            "{:<40} {:<8} {:>5} {:>9.1}s {:>5} {:>8}  {}{me}",
            n["id"].as_str().unwrap_or(""),
            n["status"].as_str().unwrap_or(""),
            n["epoch"],
            n["heartbeat_age_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            n["running_invocations"],
            n["live_devboxes"],
            n["address"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}
