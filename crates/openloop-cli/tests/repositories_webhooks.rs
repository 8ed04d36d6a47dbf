//! Push-to-deploy through webhooks, on both databases: a local bare repository holding the
//! seed's example agent, connected to a project; signed GitHub, Gitea and GitLab deliveries
//! deploy exactly the pushed commit, anything unsigned or off-branch deploys nothing, every
//! delivery is recorded, the webhook secret is never read back. Git traffic stays on this
//! machine (repository paths).

mod common;

use common::repos::{
    connect, deliver, deliveries, deployments_of, get_text, github, hmac_hex, invoke, push_payload,
    wait_deployed, Repo, TEST_ENV,
};
use common::ui::Ui;
use common::{Db, Server};
use serde_json::json;

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
