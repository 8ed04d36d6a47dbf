//! `openloop repos` drives push-to-deploy: add (the secret printed once), list, deliveries,
//! remove.

mod common;

use common::repos::{deliver, deployments_of, github, push_payload, Repo, TEST_ENV};
use common::{bin, Db, Server};
use std::process::Command;

fn repos_cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .arg("repos")
        .args(args)
        .args(["--server", &server.url, "--api-key", &server.key])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn repos_cli_adds_lists_and_removes() {
    let server = Server::start_with(Db::Sqlite, TEST_ENV).await.unwrap();
    let repo = Repo::new();
    let (ok, out, err) = repos_cli(
        &server,
        &["add", repo.url(), "--name", "cli-proj", "--branch", "main"],
    );
    assert!(ok, "{out}\n{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    let hook = field("webhook URL:");
    let secret = field("webhook secret:");
    let id = hook
        .strip_prefix(&format!("{}/v1/repositories/", server.url))
        .and_then(|r| r.strip_suffix("/webhook"))
        .unwrap_or_else(|| panic!("{hook}"))
        .to_string();
    assert!(err.contains("shown only this once"), "{err}");

    // The secret the command printed signs deliveries.
    let body = push_payload("refs/heads/main", &repo.git(&["rev-parse", "HEAD"]));
    let (code, v) = deliver(&server, &hook, &github(&secret, "push", &body), body).await;
    assert_eq!(code, 202, "{v}");

    let (ok, out, _) = repos_cli(&server, &["list"]);
    assert!(ok);
    assert!(
        out.contains(&id) && out.contains("cli-proj") && out.contains(repo.url()),
        "{out}"
    );
    assert!(!out.contains(&secret), "list shows no secret: {out}");
    let (ok, out, _) = repos_cli(&server, &["deliveries", &id]);
    assert!(ok);
    assert!(out.contains("github") && out.contains("deployed"), "{out}");

    let (ok, out, err) = repos_cli(&server, &["remove", &id]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains(&id), "{out}");
    let (ok, out, _) = repos_cli(&server, &["list"]);
    assert!(ok);
    assert!(!out.contains(&id), "{out}");
    let (ok, _, err) = repos_cli(&server, &["remove", &id]);
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
    // The deployment it made is not the connection's to remove.
    let deps = deployments_of(&server, "cli-proj").await;
    assert_eq!(deps.len(), 1);
}
