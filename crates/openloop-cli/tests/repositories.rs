//! Push-to-deploy, on both databases: a local bare repository holding the seed's example
//! agent, connected to a project; signed GitHub, Gitea and GitLab deliveries deploy exactly
//! the pushed commit, anything unsigned or off-branch deploys nothing, every delivery is
//! recorded, the webhook secret is never read back, polling deploys without any webhook and
//! stops with the connection, and `openloop repos` drives it all. Git traffic stays on this
//! machine (repository paths).

mod common;

use common::ui::Ui;
use common::{bin, copy_dir, example, Db, Server};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The lowest polling interval, allowed by `--repo-min-poll-seconds` (its environment form).
const TEST_ENV: &[(&str, &str)] = &[("OPENLOOP_REPO_MIN_POLL_SECONDS", "1")];

/// A bare repository (`origin.git`) and a working copy that pushes to it.
struct Repo {
    _dir: tempfile::TempDir,
    origin: PathBuf,
    work: PathBuf,
}

fn git_in(dir: &Path, args: &[&str]) -> String {
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
    fn new() -> Repo {
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

    fn url(&self) -> &str {
        self.origin.to_str().unwrap()
    }

    fn git(&self, args: &[&str]) -> String {
        git_in(&self.work, args)
    }

    /// Make the function answer with `(version)` after the user's name, commit, push to
    /// `main`; the new commit.
    fn commit_version(&self, version: &str) -> String {
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
    fn commit_on_branch(&self, branch: &str) -> String {
        self.git(&["checkout", "-q", "-b", branch]);
        self.git(&["commit", "-q", "--allow-empty", "-m", branch]);
        self.git(&["push", "-q", "origin", branch]);
        let sha = self.git(&["rev-parse", "HEAD"]);
        self.git(&["checkout", "-q", "main"]);
        sha
    }
}

fn hmac_hex(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A push payload with the fields the providers share (and a few of GitHub's others).
fn push_payload(git_ref: &str, after: &str) -> String {
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
async fn deliver(
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

fn github(secret: &str, event: &str, body: &str) -> Vec<(&'static str, String)> {
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
async fn connect(server: &Server, mut body: Value, url: &str) -> (u16, Value) {
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
async fn wait_deployed(server: &Server, id: &str) -> Value {
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

async fn deployments_of(server: &Server, project: &str) -> Vec<Value> {
    server
        .get_json(&format!("/v1/deployments?project={project}"))
        .await["deployments"]
        .as_array()
        .unwrap()
        .clone()
}

/// Wait until `project` has a deployment of `commit`; returns its id.
async fn wait_deployment_of(server: &Server, project: &str, commit: &str) -> String {
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
async fn invoke(server: &Server, project: &str) -> String {
    let (code, inv) = server
        .invoke_sync(project, "example_agent", json!({"name": "Bob"}))
        .await;
    assert_eq!(code, 200, "{inv}");
    assert_eq!(inv["status"], "success", "{inv}");
    let result = inv["result"].as_str().unwrap().to_string();
    assert!(result.contains("executed hello from devbox"), "{result}");
    result
}

async fn get_text(server: &Server, path: &str) -> String {
    let r = server.get(path).send().await.unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.text().await.unwrap()
}

async fn deliveries(server: &Server, id: &str) -> Vec<Value> {
    server
        .get_json(&format!("/v1/repositories/{id}/deliveries"))
        .await["deliveries"]
        .as_array()
        .unwrap()
        .clone()
}

async fn push_to_deploy(db: Db) {
    let Some(server) = Server::start_with(db, TEST_ENV).await else {
        return;
    };
    let repo = Repo::new();
    let v1 = repo.git(&["rev-parse", "HEAD"]);

    let (code, created) = connect(&server, json!({"name": "pushed"}), repo.url()).await;
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["webhook_secret"].as_str().unwrap().to_string();
    let hook = created["webhook_url"].as_str().unwrap().to_string();
    assert_eq!(hook, format!("{}/v1/repositories/{id}/webhook", server.url));
    assert_eq!(created["branch"], "main", "the default branch");
    assert_eq!(created["name"], "pushed");
    assert_eq!(created["url"], repo.url());
    assert!(created["poll_seconds"].is_null());
    assert!(secret.len() >= 32, "{secret}");

    // The secret is shown once: no later answer holds it, nor the database in clear.
    for path in [
        format!("/v1/repositories/{id}"),
        "/v1/repositories".to_string(),
    ] {
        let text = get_text(&server, &path).await;
        assert!(text.contains(&id), "{path}: {text}");
        assert!(text.contains("webhook_url"), "{path}: {text}");
        assert!(!text.contains(&secret), "{path} holds the webhook secret");
        assert!(!text.contains("webhook_secret"), "{path}: {text}");
    }
    if server.database_url.is_none() {
        for f in ["openloop.db", "openloop.db-wal"] {
            if let Ok(bytes) = std::fs::read(server.data.path().join(f)) {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{f} holds the webhook secret in clear"
                );
            }
        }
    }

    // Unsigned, wrongly signed or signed for another body: 401, nothing deployed.
    let body = push_payload("refs/heads/main", &v1);
    let (code, v) = deliver(
        &server,
        &hook,
        &github("not-the-secret", "push", &body),
        body.clone(),
    )
    .await;
    assert_eq!(code, 401, "{v}");
    assert_eq!(v["error"]["code"], "unauthorized");
    let unsigned = vec![("X-GitHub-Event", "push".to_string())];
    let (code, _) = deliver(&server, &hook, &unsigned, body.clone()).await;
    assert_eq!(code, 401);
    let other_body = push_payload("refs/heads/main", &"1".repeat(40));
    let (code, _) = deliver(&server, &hook, &github(&secret, "push", &body), other_body).await;
    assert_eq!(code, 401);
    // An API key is no substitute for the signature.
    let r = server
        .post(&format!("/v1/repositories/{id}/webhook"))
        .header("X-GitHub-Event", "push")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(deployments_of(&server, "pushed").await.is_empty());

    // GitHub's ping, then a signed push to main: that exact commit is deployed and serves.
    let ping = json!({"zen": "Design for failure.", "hook_id": 1}).to_string();
    let (code, v) = deliver(&server, &hook, &github(&secret, "ping", &ping), ping).await;
    assert_eq!((code, v["outcome"].as_str()), (200, Some("ignored")), "{v}");
    let (code, v) = deliver(
        &server,
        &hook,
        &github(&secret, "push", &body),
        body.clone(),
    )
    .await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["outcome"], "deployed");
    let dep1 = v["deployment_id"].as_str().unwrap().to_string();
    let d = wait_deployed(&server, &dep1).await;
    assert_eq!(d["ref"], v1.as_str());
    assert_eq!(d["source"], repo.url());
    assert_eq!(d["project_name"], "pushed");
    let answer = invoke(&server, "pushed").await;
    assert!(answer.contains("User: Bob (v1)"), "{answer}");

    // The dashboard shows the new deployment of that commit, and the delivery that made it.
    let ui = Ui::sign_in(&server, &server.key).await.unwrap();
    let page = ui.get("/ui/deployments").await.text().await.unwrap();
    let row = page
        .split("<tr>")
        .skip(1)
        .find(|r| r.contains(&dep1))
        .expect("the pushed deployment is listed");
    assert!(row.contains(&v1) && row.contains("deployed"), "{row}");
    let page = ui.get("/ui/repositories").await.text().await.unwrap();
    assert!(page.contains(&hook), "the webhook URL is shown");
    assert!(!page.contains(&secret), "the secret is never shown again");
    let delivery = page
        .split("<tr>")
        .skip(1)
        .find(|r| r.contains(&format!("/ui/deployments/{dep1}")))
        .expect("the delivery links its deployment");
    assert!(
        delivery.contains("github") && delivery.contains("deployed"),
        "{delivery}"
    );

    // Pushes to another branch, and a branch deleted: acknowledged, nothing deployed.
    let feature = repo.commit_on_branch("feature");
    let body = push_payload("refs/heads/feature", &feature);
    let (code, v) = deliver(&server, &hook, &github(&secret, "push", &body), body).await;
    assert_eq!((code, v["outcome"].as_str()), (200, Some("ignored")), "{v}");
    assert!(v["deployment_id"].is_null());
    let body = push_payload("refs/heads/main", &"0".repeat(40));
    let (code, v) = deliver(&server, &hook, &github(&secret, "push", &body), body).await;
    assert_eq!((code, v["outcome"].as_str()), (200, Some("ignored")), "{v}");
    let body = push_payload("refs/tags/v1", &v1);
    let (code, _) = deliver(&server, &hook, &github(&secret, "push", &body), body).await;
    assert_eq!(code, 200);
    assert_eq!(deployments_of(&server, "pushed").await.len(), 1);

    // Gitea: a second commit changes the answer; the new deployment serves it.
    let v2 = repo.commit_version("v2");
    let body = push_payload("refs/heads/main", &v2);
    let headers = vec![
        ("X-Gitea-Event", "push".to_string()),
        ("X-Gitea-Delivery", "1".to_string()),
        ("X-Gitea-Signature", hmac_hex(&secret, &body)),
    ];
    let (code, v) = deliver(&server, &hook, &headers, body).await;
    assert_eq!(code, 202, "{v}");
    let dep2 = v["deployment_id"].as_str().unwrap().to_string();
    assert_ne!(dep1, dep2);
    assert_eq!(wait_deployed(&server, &dep2).await["ref"], v2.as_str());
    let answer = invoke(&server, "pushed").await;
    assert!(answer.contains("User: Bob (v2)"), "{answer}");

    // GitLab: the token is the secret; a wrong one is refused.
    let v3 = repo.commit_version("v3");
    let body = json!({
        "object_kind": "push", "event_name": "push", "ref": "refs/heads/main",
        "before": v2, "after": v3, "checkout_sha": v3, "total_commits_count": 1,
    })
    .to_string();
    let gitlab = |token: &str| {
        vec![
            ("X-Gitlab-Event", "Push Hook".to_string()),
            ("X-Gitlab-Token", token.to_string()),
        ]
    };
    let (code, _) = deliver(&server, &hook, &gitlab(&format!("{secret}x")), body.clone()).await;
    assert_eq!(code, 401);
    let (code, v) = deliver(&server, &hook, &gitlab(&secret), body).await;
    assert_eq!(code, 202, "{v}");
    let dep3 = v["deployment_id"].as_str().unwrap().to_string();
    assert_eq!(wait_deployed(&server, &dep3).await["ref"], v3.as_str());
    let answer = invoke(&server, "pushed").await;
    assert!(answer.contains("User: Bob (v3)"), "{answer}");
    assert_eq!(deployments_of(&server, "pushed").await.len(), 3);

    // The connection remembers what it deployed.
    let r = server.get_json(&format!("/v1/repositories/{id}")).await;
    assert_eq!(r["last_commit"], v3.as_str());
    assert_eq!(r["last_deployment_id"], dep3.as_str());

    // Every delivery is recorded, newest first, with its outcome.
    let all = deliveries(&server, &id).await;
    let seen: Vec<(&str, &str, Option<&str>)> = all
        .iter()
        .map(|d| {
            (
                d["provider"].as_str().unwrap(),
                d["outcome"].as_str().unwrap(),
                d["deployment_id"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("gitlab", "deployed", Some(dep3.as_str())),
            ("gitlab", "rejected", None),
            ("gitea", "deployed", Some(dep2.as_str())),
            ("github", "ignored", None),
            ("github", "ignored", None),
            ("github", "ignored", None),
            ("github", "deployed", Some(dep1.as_str())),
            ("github", "ignored", None),
            ("github", "rejected", None),
            ("github", "rejected", None),
            ("github", "rejected", None),
            ("github", "rejected", None),
        ],
        "{all:#?}"
    );
    assert_eq!(all[0]["commit"], v3.as_str());
    assert_eq!(all[0]["ref"], "refs/heads/main");
    assert_eq!(all[0]["event"], "Push Hook");
    assert_eq!(all[3]["ref"], "refs/tags/v1");
    assert_eq!(all[5]["ref"], "refs/heads/feature");
    assert_eq!(all[5]["commit"], feature.as_str());
    assert_eq!(all[7]["event"], "ping");
    assert!(
        all[8]["commit"].is_null(),
        "nothing of a refused body is kept"
    );
    let received: Vec<i64> = all
        .iter()
        .map(|d| d["received_at_ms"].as_i64().unwrap())
        .collect();
    assert!(received.windows(2).all(|w| w[0] >= w[1]), "{received:?}");
    let text = get_text(&server, &format!("/v1/repositories/{id}/deliveries")).await;
    assert!(!text.contains(&secret));
}

#[tokio::test]
async fn push_to_deploy_sqlite() {
    push_to_deploy(Db::Sqlite).await;
}

#[tokio::test]
async fn push_to_deploy_postgres() {
    push_to_deploy(Db::Postgres).await;
}

async fn polling(db: Db) {
    let Some(mut server) = Server::start_with(db, TEST_ENV).await else {
        return;
    };
    let repo = Repo::new();
    let v1 = repo.git(&["rev-parse", "HEAD"]);
    let (code, v) = connect(
        &server,
        json!({"name": "polled", "poll_seconds": 0}),
        repo.url(),
    )
    .await;
    assert_eq!(code, 400, "{v}");

    // The first poll deploys the branch's head; a push is then deployed without a webhook.
    let (code, created) = connect(
        &server,
        json!({"name": "polled", "branch": "main", "poll_seconds": 1}),
        repo.url(),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["poll_seconds"], 1);
    let id = created["id"].as_str().unwrap().to_string();
    let dep1 = wait_deployment_of(&server, "polled", &v1).await;
    wait_deployed(&server, &dep1).await;
    let v2 = repo.commit_version("v2");
    let dep2 = wait_deployment_of(&server, "polled", &v2).await;
    let d = wait_deployed(&server, &dep2).await;
    assert_eq!(d["source"], repo.url());
    let answer = invoke(&server, "polled").await;
    assert!(answer.contains("User: Bob (v2)"), "{answer}");

    // An unchanged head is not deployed again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(deployments_of(&server, "polled").await.len(), 2);
    let all = deliveries(&server, &id).await;
    assert_eq!(all.len(), 2, "{all:#?}");
    for (d, (commit, dep)) in all.iter().zip([(&v2, &dep2), (&v1, &dep1)]) {
        assert_eq!(d["provider"], "poll");
        assert_eq!(d["outcome"], "deployed");
        assert_eq!(d["commit"], commit.as_str());
        assert_eq!(d["deployment_id"], dep.as_str());
        assert_eq!(d["ref"], "refs/heads/main");
    }
    // A push to another branch is not the connection's.
    repo.commit_on_branch("feature");

    // After a restart the poller runs again, and the sealed webhook secret still opens.
    server.kill9();
    server.spawn().await;
    let v3 = repo.commit_version("v3");
    let dep3 = wait_deployment_of(&server, "polled", &v3).await;
    wait_deployed(&server, &dep3).await;
    let hook = created["webhook_url"].as_str().unwrap();
    let secret = created["webhook_secret"].as_str().unwrap();
    let ping = "{}".to_string();
    let (code, v) = deliver(&server, hook, &github(secret, "ping", &ping), ping).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(deployments_of(&server, "polled").await.len(), 3);

    // Removed: the connection is gone and polling stops.
    let r = server
        .http
        .delete(format!("{}/v1/repositories/{id}", server.url))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = server
        .get(&format!("/v1/repositories/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (code, _) = deliver(&server, hook, &[], "{}".into()).await;
    assert_eq!(code, 404);
    let v4 = repo.commit_version("v4");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let deps = deployments_of(&server, "polled").await;
    assert_eq!(deps.len(), 3, "{deps:#?}");
    assert!(deps.iter().all(|d| d["ref"] != v4.as_str()));
}

#[tokio::test]
async fn polling_sqlite() {
    polling(Db::Sqlite).await;
}

#[tokio::test]
async fn polling_postgres() {
    polling(Db::Postgres).await;
}

/// What anyone may send the public webhook, and what a connection accepts; no builds.
async fn limits_and_validation(db: Db) {
    let Some(server) = Server::start_with(db, TEST_ENV).await else {
        return;
    };
    let url = "/srv/git/never-fetched.git";
    for (body, why) in [
        (json!({"name": "bad name!"}), "project name"),
        (json!({"name": "p", "branch": "a..b"}), "branch"),
        (json!({"name": "p", "branch": "-x"}), "branch"),
        (json!({"name": "p", "poll_seconds": 700000}), "poll_seconds"),
    ] {
        let (code, v) = connect(&server, body, url).await;
        assert_eq!(code, 400, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{v}");
    }
    let (code, _) = connect(&server, json!({"name": "p"}), "--upload-pack=touch /tmp/x").await;
    assert_eq!(code, 400);
    let r = server
        .post("/v1/repositories")
        .json(&json!({"url": url}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "name is required");
    let r = server
        .http
        .post(format!("{}/v1/repositories", server.url))
        .json(&json!({"url": url, "name": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "connecting needs a key");
    let r = server
        .http
        .get(format!("{}/v1/repositories", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "listing needs a key");

    // `refs/heads/` is taken off a branch given in full.
    let (code, created) = connect(
        &server,
        json!({"name": "p", "branch": "refs/heads/release"}),
        url,
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["branch"], "release");
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["webhook_secret"].as_str().unwrap().to_string();
    let hook = created["webhook_url"].as_str().unwrap().to_string();

    // Unknown ids, garbage, oversized bodies: clean 4xx answers, never a 5xx.
    let (code, v) = deliver(
        &server,
        &format!("{}/v1/repositories/repo_nope/webhook", server.url),
        &[],
        "x".into(),
    )
    .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // One byte over the limit (far over it, the server stops reading and closes while the
    // client still writes).
    let big = "x".repeat((1 << 20) + 1);
    let (code, v) = deliver(&server, &hook, &github(&secret, "push", &big), big).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{v}"
    );
    let garbage_headers: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![
            ("X-GitHub-Event", "push".into()),
            ("X-Hub-Signature-256", "sha256=".into()),
        ],
        vec![
            ("X-GitHub-Event", "push".into()),
            ("X-Hub-Signature-256", "zzzz".into()),
        ],
        vec![
            ("X-Gitea-Event", "push".into()),
            ("X-Gitea-Signature", "00".repeat(32)),
        ],
        vec![("X-Forgejo-Event", "push".into())],
        vec![
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Token", String::new()),
        ],
        vec![
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Token", "x".repeat(5000)),
        ],
    ];
    for headers in &garbage_headers {
        for body in ["", "null", "[1,2]", "{\"ref\": 5}", "\u{0}\u{ff}"] {
            let (code, v) = deliver(&server, &hook, headers, body.into()).await;
            assert_eq!(code, 401, "{headers:?} {body:?}: {v}");
        }
    }
    // Authentic but malformed payloads: 400, recorded as rejected.
    for body in [
        "not json",
        "{}",
        "{\"ref\": \"refs/heads/release\", \"after\": \"HEAD\"}",
    ] {
        let (code, v) = deliver(&server, &hook, &github(&secret, "push", body), body.into()).await;
        assert_eq!(code, 400, "{body}: {v}");
    }
    let all = deliveries(&server, &id).await;
    assert_eq!(all[0]["outcome"], "rejected");
    assert_eq!(all[0]["provider"], "github");
    assert!(
        all[0]["message"].as_str().unwrap().contains("commit"),
        "{}",
        all[0]
    );

    // Only the last 100 deliveries are kept: unsigned requests cannot grow the database.
    for _ in 0..110 {
        let (code, _) = deliver(
            &server,
            &hook,
            &[("X-GitHub-Event", "push".into())],
            "{}".into(),
        )
        .await;
        assert_eq!(code, 401);
    }
    let all = deliveries(&server, &id).await;
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|d| d["outcome"] == "rejected"));
    let few = server
        .get_json(&format!("/v1/repositories/{id}/deliveries?limit=3"))
        .await;
    assert_eq!(few["deliveries"].as_array().unwrap().len(), 3);

    // Removing twice: the second is a 404.
    for expected in [200, 404] {
        let r = server
            .http
            .delete(format!("{}/v1/repositories/{id}", server.url))
            .bearer_auth(&server.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected);
    }
    let r = server
        .get(&format!("/v1/repositories/{id}/deliveries"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn limits_and_validation_sqlite() {
    limits_and_validation(Db::Sqlite).await;
}

#[tokio::test]
async fn limits_and_validation_postgres() {
    limits_and_validation(Db::Postgres).await;
}

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
