//! Long runs: no timeouts, callers may leave, and a crash loses nothing.

mod common;

use common::{fixture, Db, Server};
use serde_json::json;
use std::time::Duration;

async fn restart_recovery(db: Db) {
    let Some(mut server) = Server::start_with(db, &[("OPENLOOP_MAX_CONCURRENT_RUNS", "2")]).await
    else {
        return;
    };
    server.deploy_ok(&fixture("test_agent"));

    // A synchronous caller that gives up does not stop the run.
    let r = server
        .post("/v1/functions/test_agent/sleepy/invoke_sync")
        .json(&json!({"request": {"seconds": 1.5}}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(r.is_err(), "the caller gave up before the run ended");
    let list = server
        .get_json("/v1/functions/invocations?function=sleepy")
        .await;
    let id = list["invocations"][0]["id"].as_str().unwrap().to_string();
    let done = server.wait_invocation(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "success");
    assert_eq!(done["result"], "slept 1.5");

    // Two runs in flight (both slots: one plain, one retryable) and one queued behind them;
    // then the server dies.
    let running = server
        .invoke_async("test_agent", "sleepy", json!({"seconds": 60}))
        .await;
    let retried = server
        .invoke_async("test_agent", "sleepy_retryable", json!({"seconds": 2}))
        .await;
    let queued = server
        .invoke_async("test_agent", "echo", json!({"text": "after restart"}))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server
        .get_json(&format!("/v1/functions/invocations/{running}"))
        .await["status"]
        != "running"
        || server
            .get_json(&format!("/v1/functions/invocations/{retried}"))
            .await["status"]
            != "running"
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server
            .get_json(&format!("/v1/functions/invocations/{queued}"))
            .await["status"],
        "queued"
    );
    server.kill9();
    server.spawn().await;

    let r = server
        .wait_invocation(&running, Duration::from_secs(30))
        .await;
    assert_eq!(r["status"], "failure");
    assert_eq!(r["error"]["type"], "ServerRestarted", "{r}");
    let q = server
        .wait_invocation(&queued, Duration::from_secs(60))
        .await;
    assert_eq!(q["status"], "success", "{q}");
    assert_eq!(q["result"]["text"], "after restart");
    let again = server
        .wait_invocation(&retried, Duration::from_secs(60))
        .await;
    assert_eq!(
        again["status"], "success",
        "a retryable run is run again: {again}"
    );
    assert_eq!(again["result"], "slept 2.0");
}

#[tokio::test]
async fn restart_recovery_on_sqlite() {
    restart_recovery(Db::Sqlite).await;
}

#[tokio::test]
async fn restart_recovery_on_postgres() {
    restart_recovery(Db::Postgres).await;
}
