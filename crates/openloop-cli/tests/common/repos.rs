//! Push-to-deploy's helpers (the `repositories_*` tests): a local bare repository holding the
//! seed's example agent, signed deliveries, connections, waits for their deployments. Git
//! traffic stays on this machine (repository paths).

use super::{copy_dir, example, Server};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The lowest polling interval, allowed by `--repo-min-poll-seconds` (its environment form).
pub const TEST_ENV: &[(&str, &str)] = &[("OPENLOOP_REPO_MIN_POLL_SECONDS", "1")];

/// A bare repository (`origin.git`) and a working copy that pushes to it.
pub struct Repo {
    _dir: tempfile::TempDir,
    origin: PathBuf,
    work: PathBuf,
}

pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Repo {
    /// The example agent, its answer marked `v1`, committed and pushed to `main`.
    pub fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("origin.git");
        let work = dir.path().join("work");
        git_in(
            dir.path(),
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                origin.to_str().unwrap(),
            ],
        );
        copy_dir(&example(), &work);
        git_in(&work, &["init", "-q", "-b", "main"]);
        git_in(
            &work,
            &["remote", "add", "origin", origin.to_str().unwrap()],
        );
        let repo = Repo {
            _dir: dir,
            origin,
            work,
        };
        repo.commit_version("v1");
        repo
    }

    pub fn url(&self) -> &str {
        self.origin.to_str().unwrap()
    }

    pub fn git(&self, args: &[&str]) -> String {
        git_in(&self.work, args)
    }

    /// Make the function answer with `(version)` after the user's name, commit, push to
    /// `main`; the new commit.
    pub fn commit_version(&self, version: &str) -> String {
        let f = self.work.join("agent/bot.py");
        let text = std::fs::read_to_string(&f).unwrap();
        let start = text.find("User: {name}").expect("the example's answer");
        let end = start + text[start..].find('"').unwrap();
        let text = format!(
            "{}User: {{name}} ({version}){}",
            &text[..start],
            &text[end..]
        );
        std::fs::write(&f, text).unwrap();
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", version]);
        self.git(&["push", "-q", "origin", "main"]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// A commit on `branch` (not `main`), pushed; the commit.
    pub fn commit_on_branch(&self, branch: &str) -> String {
        self.git(&["checkout", "-q", "-b", branch]);
        self.git(&["commit", "-q", "--allow-empty", "-m", branch]);
        self.git(&["push", "-q", "origin", branch]);
        let sha = self.git(&["rev-parse", "HEAD"]);
        self.git(&["checkout", "-q", "main"]);
        sha
    }
}

pub fn hmac_hex(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A push payload with the fields the providers share (and a few of GitHub's others).
pub fn push_payload(git_ref: &str, after: &str) -> String {
    json!({
        "ref": git_ref,
        "before": "0".repeat(40),
        "after": after,
        "created": false,
        "deleted": after.bytes().all(|b| b == b'0'),
        "repository": {"full_name": "me/agent"},
        "commits": [{"id": after, "message": "a commit"}],
    })
    .to_string()
}

/// POST a delivery to `webhook_url` (no API key: it is authenticated by its signature).
pub async fn deliver(
    server: &Server,
    webhook_url: &str,
    headers: &[(&str, String)],
    body: String,
) -> (u16, Value) {
    let mut req = server
        .http
        .post(webhook_url)
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub fn github(secret: &str, event: &str, body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-GitHub-Event", event.to_string()),
        (
            "X-GitHub-Delivery",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
        ),
        (
            "X-Hub-Signature-256",
            format!("sha256={}", hmac_hex(secret, body)),
        ),
    ]
}

/// Connect `repo` with `body`'s other fields; (status, answer).
pub async fn connect(server: &Server, mut body: Value, url: &str) -> (u16, Value) {
    body["url"] = json!(url);
    let r = server
        .post("/v1/repositories")
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Wait for a deployment to finish building; insist it deployed.
pub async fn wait_deployed(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let d = server.get_json(&format!("/v1/deployments/{id}")).await;
        match d["status"].as_str() {
            Some("deployed") => return d,
            Some("failed") => {
                let logs = server.get_json(&format!("/v1/deployments/{id}/logs")).await;
                panic!("deployment {id} failed: {d}\n{logs}");
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "deployment {id} did not finish: {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn deployments_of(server: &Server, project: &str) -> Vec<Value> {
    server
        .get_json(&format!("/v1/deployments?project={project}"))
        .await["deployments"]
        .as_array()
        .unwrap()
        .clone()
}

/// Wait until `project` has a deployment of `commit`; returns its id.
pub async fn wait_deployment_of(server: &Server, project: &str, commit: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = deployments_of(server, project)
            .await
            .into_iter()
            .find(|d| d["ref"] == commit);
        if let Some(d) = found {
            return d["id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no deployment of {commit} in {project}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Invoke the example and return its answer.
pub async fn invoke(server: &Server, project: &str) -> String {
    let (code, inv) = server
        .invoke_sync(project, "example_agent", json!({"name": "Bob"}))
        .await;
    assert_eq!(code, 200, "{inv}");
    assert_eq!(inv["status"], "success", "{inv}");
    let result = inv["result"].as_str().unwrap().to_string();
    assert!(result.contains("executed hello from devbox"), "{result}");
    result
}

pub async fn get_text(server: &Server, path: &str) -> String {
    let r = server.get(path).send().await.unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.text().await.unwrap()
}

pub async fn deliveries(server: &Server, id: &str) -> Vec<Value> {
    server
        .get_json(&format!("/v1/repositories/{id}/deliveries"))
        .await["deliveries"]
        .as_array()
        .unwrap()
        .clone()
}
