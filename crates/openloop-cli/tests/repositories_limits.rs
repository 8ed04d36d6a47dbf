//! Push-to-deploy's limits, on both databases: what anyone may send the public webhook
//! (clean 4xx answers, never a 5xx; only the last 100 deliveries kept) and what a
//! connection accepts. No builds.

mod common;

use common::repos::{connect, deliver, deliveries, github, TEST_ENV};
use common::{Db, Server};
use serde_json::json;

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
