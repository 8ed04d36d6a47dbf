//! `openloop repos add|list|remove|deliveries`: push-to-deploy connections, over HTTP.

use crate::client::{check, http, ServerArgs};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Args)]
pub struct ReposArgs {
    #[command(subcommand)]
    command: ReposCommand,
}

#[derive(Subcommand)]
enum ReposCommand {
    /// Connect a git repository: pushes to its branch deploy the project. Prints the webhook
    /// URL and secret (the secret is shown only this once).
    Add {
        /// A git URL, or a repository's path on the server (a local path is sent absolute).
        url: String,
        /// The project its pushes deploy to.
        #[arg(long)]
        name: String,
        /// The branch whose pushes deploy.
        #[arg(long, default_value = "main")]
        branch: String,
        /// Also poll the branch every this many seconds (for hosts that cannot reach the
        /// server's webhook).
        #[arg(long)]
        poll_seconds: Option<u64>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List connected repositories (never their secrets).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a connection (its webhook stops answering, its polling stops).
    Remove {
        /// The connection's id (`repo_…`).
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A connection's last deliveries, newest first.
    Deliveries {
        /// The connection's id (`repo_…`).
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

async fn call(
    server: &ServerArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let key = server.key()?;
    let mut req = http().request(method, server.url(path)).bearer_auth(&key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {}", server.server))?;
    Ok(check(resp).await?.json().await?)
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or("-")
}

pub async fn run(args: ReposArgs) -> anyhow::Result<()> {
    match args.command {
        ReposCommand::Add {
            url,
            name,
            branch,
            poll_seconds,
            server,
        } => {
            let local = Path::new(&url);
            let url = if !url.contains("://") && local.exists() {
                local.canonicalize()?.to_string_lossy().into_owned()
            } else {
                url
            };
            let body =
                json!({"url": url, "name": name, "branch": branch, "poll_seconds": poll_seconds});
            let r = call(
                &server,
                reqwest::Method::POST,
                "/v1/repositories",
                Some(body),
            )
            .await?;
            let polling = match r["poll_seconds"].as_u64() {
                Some(s) => format!(", polled every {s} s"),
                None => String::new(),
            };
            eprintln!(
                "connected {}: pushes to {} deploy project {}{polling}",
                text(&r, "id"),
                text(&r, "branch"),
                text(&r, "name")
            );
            println!("webhook URL:    {}", text(&r, "webhook_url"));
            println!("webhook secret: {}", text(&r, "webhook_secret"));
            eprintln!("the secret is shown only this once: set it as the webhook's secret (GitHub, Gitea, Forgejo) or token (GitLab), content type application/json, push events");
        }
        ReposCommand::List { server } => {
            let r = call(&server, reqwest::Method::GET, "/v1/repositories", None).await?;
            println!(
                "{:<38} {:<24} {:<16} {:<6} {:<12} URL",
                "ID", "NAME", "BRANCH", "POLL", "LAST COMMIT"
            );
            for c in r["repositories"].as_array().into_iter().flatten() {
                let poll = c["poll_seconds"]
                    .as_u64()
                    .map(|s| format!("{s}s"))
                    .unwrap_or_else(|| "-".into());
                let commit = c["last_commit"]
                    .as_str()
                    .map_or("-", |s| &s[..12.min(s.len())]);
                println!(
                    "{:<38} {:<24} {:<16} {:<6} {:<12} {}",
                    text(c, "id"),
                    text(c, "name"),
                    text(c, "branch"),
                    poll,
                    commit,
                    text(c, "url")
                );
            }
        }
        ReposCommand::Remove { id, server } => {
            let r = call(
                &server,
                reqwest::Method::DELETE,
                &format!("/v1/repositories/{id}"),
                None,
            )
            .await?;
            println!("removed {} ({})", text(&r, "id"), text(&r, "url"));
        }
        ReposCommand::Deliveries { id, server } => {
            let r = call(
                &server,
                reqwest::Method::GET,
                &format!("/v1/repositories/{id}/deliveries"),
                None,
            )
            .await?;
            for d in r["deliveries"].as_array().into_iter().flatten() {
                println!(
                    "{} {:<8} {:<9} {:<10} {} {}",
                    d["received_at_ms"].as_i64().unwrap_or(0),
                    text(d, "provider"),
                    text(d, "event"),
                    text(d, "outcome"),
                    text(d, "commit"),
                    text(d, "message")
                );
            }
        }
    }
    Ok(())
}
