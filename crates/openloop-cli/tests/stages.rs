//! The per-stage timing of the invocation path (`GET /v1/metrics/stages`): every stage of a
//! warm `invoke_sync` is recorded, nested stages fit inside their parents, and a reset
//! clears the figures.

mod common;

use common::{fixture, Db, Server};
use serde_json::{json, Value};

fn stage<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {stats:#}"))
}

#[tokio::test]
async fn every_stage_of_a_warm_invocation_is_timed() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    server.deploy_ok(&fixture("test_agent"));
    // A key is needed, as everywhere.
    let r = server
        .http
        .get(format!("{}/v1/metrics/stages", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let (code, _) = server
        .invoke_sync("test_agent", "echo", json!({"text": "warm"}))
        .await;
    assert_eq!(code, 200);
    let r = server
        .post("/v1/metrics/stages/reset")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..3 {
        let (code, v) = server
            .invoke_sync("test_agent", "echo", json!({"text": "hi"}))
            .await;
        assert_eq!((code, v["status"].as_str()), (200, Some("success")), "{v}");
    }
    let stats = server.get_json("/v1/metrics/stages").await;
    for name in [
        "auth",
        "validate",
        "insert",
        "queue",
        "read",
        "prepare",
        "handoff",
        "user_code",
        "teardown",
        "run",
        "logs_flush",
        "devboxes",
        "finish",
        "wait",
        "respond",
        "invoke_sync",
    ] {
        let s = stage(&stats, name);
        assert!(s["count"].as_u64().unwrap() >= 3, "{name}: {s}");
    }
    // With a slot free, a run is recorded as running in the statement that records it: it
    // never waits for slots and is never marked running by a second statement.
    for name in ["slots", "mark_running"] {
        assert!(
            !stats["stages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["stage"] == name),
            "{name} on the path of a run with a free slot: {stats:#}"
        );
    }
    // Nested stages fit inside the stages that hold them.
    let mean = |n: &str| stage(&stats, n)["mean_us"].as_f64().unwrap();
    assert!(mean("invoke_sync") >= mean("wait"), "{stats:#}");
    assert!(mean("wait") >= mean("run"), "{stats:#}");
    assert!(
        mean("run") >= mean("user_code") + mean("handoff"),
        "{stats:#}"
    );

    let r = server
        .post("/v1/metrics/stages/reset")
        .send()
        .await
        .unwrap();
    let cleared: Value = r.json().await.unwrap();
    assert_eq!(cleared["stages"], json!([]));

    // `sleepy(seconds: float)`: JSON types alone decide its requests, so a request of the
    // right types is not sent to the warm process to be validated...
    let (code, v) = server
        .invoke_sync("test_agent", "sleepy", json!({"seconds": 0.01}))
        .await;
    assert_eq!((code, v["status"].as_str()), (200, Some("success")), "{v}");
    let stats = server.get_json("/v1/metrics/stages").await;
    let names: Vec<&str> = stats["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["stage"].as_str())
        .collect();
    assert!(names.contains(&"insert"), "{names:?}");
    assert!(!names.contains(&"validate"), "{names:?}");
    // ...and any other still is: pydantic accepts "0.01" (lax mode), and names the field of
    // a value it cannot read; a missing or unknown parameter is refused too.
    let (code, v) = server
        .invoke_sync("test_agent", "sleepy", json!({"seconds": "0.01"}))
        .await;
    assert_eq!((code, v["status"].as_str()), (200, Some("success")), "{v}");
    for bad in [
        json!({"seconds": "soon"}),
        json!({}),
        json!({"seconds": 0.01, "extra": 1}),
    ] {
        let r = server
            .post("/v1/functions/test_agent/sleepy/invoke_sync")
            .json(&json!({"request": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let stats = server.get_json("/v1/metrics/stages").await;
    assert_eq!(stage(&stats, "validate")["count"], 4, "{stats:#}");
}
