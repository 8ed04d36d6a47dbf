//! Push-to-deploy by polling, on both databases: a connection with `poll_seconds` deploys
//! its branch's head without any webhook, again after a restart, and stops with the
//! connection.

mod common;

use common::repos::{
    connect, deliver, deliveries, deployments_of, github, invoke, wait_deployed,
    wait_deployment_of, Repo, TEST_ENV,
};
use common::{Db, Server};
use serde_json::json;
use std::time::Duration;

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
