//! The devbox API driven by Runloop's own Python client (`runloop_api_client` from PyPI, pinned
//! in `common::RUNLOOP_CLIENT_VERSION`).

mod common;

use common::{Db, Server};

#[tokio::test]
async fn runloop_python_client_works_unchanged() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    common::run_client_check(
        &server,
        "runloop_client_check.py",
        &[],
        "all devbox calls worked",
    )
    .await;
}

#[tokio::test]
async fn idle_devboxes_shut_down_and_keep_alive_postpones_it() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let body = serde_json::json!({"launch_parameters": {"keep_alive_time_seconds": 2}});
    let idle = server.create_devbox(body.clone()).await;
    let kept = server.create_devbox(body).await;
    // Keep one busy past its keep-alive time; leave the other alone.
    for _ in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let r = server
            .post(&format!("/v1/devboxes/{kept}/keep_alive"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = server
        .post(&format!("/v1/devboxes/{idle}/wait_for_status"))
        .json(&serde_json::json!({"statuses": ["shutdown"], "timeout_seconds": 20}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["shutdown_reason"], "keep_alive_timeout", "{v}");
    let k = server.get_json(&format!("/v1/devboxes/{kept}")).await;
    assert_eq!(
        k["status"], "running",
        "keep_alive postponed the shutdown: {k}"
    );
    // A wait that does not see the status in time answers 408.
    let r = server
        .post(&format!("/v1/devboxes/{kept}/wait_for_status"))
        .json(&serde_json::json!({"statuses": ["suspended"], "timeout_seconds": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 408);
}
