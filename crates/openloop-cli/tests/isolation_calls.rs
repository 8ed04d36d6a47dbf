//! Functions calling functions (issue 7, item 9): a run waiting on a child gives its slot
//! to the child, so recursion never deadlocks the node or starves other projects; call depth
//! is capped with a clear error; canceling a parent cancels the children it waits on.

mod common;

use common::{fixture, Db, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PROJECT: &str = "calls_agent";

async fn start(db: Db, slots: &str) -> Option<Server> {
    start_with(db, &[("OPENLOOP_MAX_CONCURRENT_RUNS", slots)]).await
}

async fn start_with(db: Db, env: &[(&str, &str)]) -> Option<Server> {
    let server = Server::start_with(db, env).await?;
    server.deploy_ok(&fixture("calls_agent"));
    Some(server)
}

/// Every invocation of a function of the test project, oldest first.
async fn invocations_of(server: &Server, function: &str) -> Vec<Value> {
    let mut v = server
        .get_json(&format!(
            "/v1/functions/invocations?project={PROJECT}&function={function}&limit=1000"
        ))
        .await["invocations"]
        .as_array()
        .unwrap()
        .clone();
    v.reverse();
    v
}

async fn with_status(server: &Server, status: &str) -> Vec<Value> {
    server
        .get_json(&format!(
            "/v1/functions/invocations?status={status}&limit=1000"
        ))
        .await["invocations"]
        .as_array()
        .unwrap()
        .clone()
}

/// Wait (bounded) until `check` holds for the invocations of `function`.
async fn wait_for(
    server: &Server,
    function: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let all = invocations_of(server, function).await;
        if check(&all) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The innermost level of a `recurse` chain (`depth` 0 in its request) is running.
fn innermost_running(all: &[Value]) -> bool {
    all.iter()
        .any(|i| i["request"]["depth"] == 0 && i["status"] == "running")
}

async fn invoke_sync_within(
    server: &Server,
    within: Duration,
    project: &str,
    function: &str,
    request: Value,
) -> Value {
    let (code, inv) = tokio::time::timeout(within, server.invoke_sync(project, function, request))
        .await
        .unwrap_or_else(|_| panic!("{project}/{function} did not finish within {within:?}"));
    assert_eq!(code, 200, "{inv}");
    inv
}

async fn deep_recursion(db: Db) {
    // The function's own limit of one is lent along the chain too.
    let Some(server) = start_with(
        db,
        &[
            ("OPENLOOP_MAX_CONCURRENT_RUNS", "4"),
            ("OPENLOOP_MAX_CONCURRENT_RUNS_PER_FUNCTION", "1"),
        ],
    )
    .await
    else {
        return;
    };
    let (ok, out, err) = server.deploy_cli(&fixture("calls_agent"), &["--name", "bystander"]);
    assert!(ok, "deploy of the unrelated project failed:\n{out}\n{err}");

    // Seven runs deep on four slots: every level above the innermost waits on its child.
    let root = server
        .invoke_async(PROJECT, "recurse", json!({"depth": 6, "sleep": 4}))
        .await;
    wait_for(
        &server,
        "recurse",
        Duration::from_secs(45),
        "the innermost of 7 nested runs starting on 4 slots",
        innermost_running,
    )
    .await;
    // While the chain is in flight, another project still gets a slot at once.
    let started = Instant::now();
    let other = invoke_sync_within(
        &server,
        Duration::from_secs(10),
        "bystander",
        "leaf",
        json!({"text": "not blocked"}),
    )
    .await;
    assert_eq!(other["status"], "success", "{other}");
    assert_eq!(other["result"], "not blocked");
    assert!(started.elapsed() < Duration::from_secs(3), "{other}");
    let chain = invocations_of(&server, "recurse").await;
    assert!(innermost_running(&chain), "the chain was still in flight");

    let done = server.wait_invocation(&root, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["result"], 6, "{done}");
    let chain = invocations_of(&server, "recurse").await;
    assert_eq!(chain.len(), 7, "{chain:#?}");
    for (level, inv) in chain.iter().enumerate() {
        assert_eq!(inv["status"], "success", "{inv}");
        if level > 0 {
            assert_eq!(inv["parent_invocation_id"], chain[level - 1]["id"], "{inv}");
        }
    }
}

#[tokio::test]
async fn deep_recursion_finishes_and_other_projects_keep_running_sqlite() {
    deep_recursion(Db::Sqlite).await;
}

#[tokio::test]
async fn deep_recursion_finishes_and_other_projects_keep_running_postgres() {
    deep_recursion(Db::Postgres).await;
}

async fn depth_cap(db: Db) {
    let Some(server) = start(db, "4").await else {
        return;
    };
    let root = invoke_sync_within(
        &server,
        Duration::from_secs(90),
        PROJECT,
        "forever",
        json!({}),
    )
    .await;
    assert_eq!(root["status"], "failure", "{root}");

    // The top-level run and ten nested levels (the default limit) ran; the eleventh was refused.
    let chain = invocations_of(&server, "forever").await;
    assert_eq!(chain.len(), 11, "{chain:#?}");
    assert_eq!(chain[0]["id"], root["id"]);
    let clause = "would run at call depth 11; the limit is 10";
    for (level, inv) in chain.iter().enumerate() {
        assert_eq!(inv["status"], "failure", "{inv}");
        let message = inv["error"]["message"].as_str().unwrap();
        assert!(message.contains(clause), "level {level}: {inv}");
        let expected = if level == 10 {
            "CallDepthExceeded"
        } else {
            "InvocationFailed"
        };
        assert_eq!(inv["error"]["type"], expected, "level {level}: {inv}");
        if level > 0 {
            assert_eq!(inv["parent_invocation_id"], chain[level - 1]["id"], "{inv}");
        }
    }

    // The refusal itself, as the API answers it to a run.
    let deepest = &chain[10];
    let message = deepest["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("call_depth_exceeded") && message.contains("HTTP 409"),
        "{deepest}"
    );

    // Nothing stays running or queued, and all four slots are free: four runs start together.
    assert!(with_status(&server, "running").await.is_empty());
    assert!(with_status(&server, "queued").await.is_empty());
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            server
                .invoke_async(PROJECT, "recurse", json!({"depth": 0, "sleep": 3}))
                .await,
        );
    }
    wait_for(
        &server,
        "recurse",
        Duration::from_secs(10),
        "four runs at once after the failed chain",
        |all| all.iter().filter(|i| i["status"] == "running").count() == 4,
    )
    .await;
    for id in ids {
        let done = server.wait_invocation(&id, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "success", "{done}");
    }
}

#[tokio::test]
async fn unbounded_recursion_stops_at_the_call_depth_limit_sqlite() {
    depth_cap(Db::Sqlite).await;
}

#[tokio::test]
async fn unbounded_recursion_stops_at_the_call_depth_limit_postgres() {
    depth_cap(Db::Postgres).await;
}

/// Most runs of `intervals` ([started, ended] in ms) in progress at one moment.
fn most_at_once(intervals: &[(i64, i64)]) -> usize {
    let mut events: Vec<(i64, i32)> = Vec::new();
    for &(s, e) in intervals {
        events.push((s, 1));
        events.push((e, -1));
    }
    // At equal times an end comes before a start: a slot is freed before it is taken again.
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test]
async fn wide_fan_out_under_two_slots_completes() {
    let server = start(Db::Sqlite, "2").await.unwrap();
    // Eight children queued with invoke_async, each calling one more level, awaited one by one.
    let inv = invoke_sync_within(
        &server,
        Duration::from_secs(90),
        PROJECT,
        "fan_out",
        json!({"n": 8, "sleep": 0.3}),
    )
    .await;
    assert_eq!(inv["status"], "success", "{inv}");
    assert_eq!(inv["result"], json!([1, 1, 1, 1, 1, 1, 1, 1]));
    // Eight concurrent `ainvoke`s from one async run: several waits of one run at once.
    let inv = invoke_sync_within(
        &server,
        Duration::from_secs(90),
        PROJECT,
        "gather",
        json!({"n": 8, "sleep": 0.3}),
    )
    .await;
    assert_eq!(inv["status"], "success", "{inv}");
    assert_eq!(inv["result"], json!([1, 1, 1, 1, 1, 1, 1, 1]));

    let runs = invocations_of(&server, "recurse").await;
    assert_eq!(runs.len(), 32, "16 children and 16 grandchildren");
    assert!(runs.iter().all(|i| i["status"] == "success"), "{runs:#?}");
    // The node's limit still bounds the runs executing code: leaves never wait, and never
    // more than two of them ran at once.
    let leaves: Vec<(i64, i64)> = runs
        .iter()
        .filter(|i| i["request"]["depth"] == 0)
        .map(|i| {
            (
                i["started_at_ms"].as_i64().unwrap(),
                i["ended_at_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(leaves.len(), 16);
    assert!(most_at_once(&leaves) <= 2, "{leaves:?}");
    assert!(with_status(&server, "running").await.is_empty());
}

#[tokio::test]
async fn canceling_a_parent_cancels_its_waiting_children() {
    let server = start(Db::Sqlite, "4").await.unwrap();
    let root = server
        .invoke_async(PROJECT, "recurse", json!({"depth": 3, "sleep": 300}))
        .await;
    wait_for(
        &server,
        "recurse",
        Duration::from_secs(45),
        "the innermost of 4 nested runs",
        innermost_running,
    )
    .await;
    let r = server
        .post(&format!("/v1/functions/invocations/{root}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for(
        &server,
        "recurse",
        Duration::from_secs(10),
        "every level canceled with the root",
        |all| all.len() == 4 && all.iter().all(|i| i["status"] == "canceled"),
    )
    .await;
    // The slots came back: four runs run together. (A canceled run gives its slots back once
    // its process is gone, a few ms after the cancel answered: each new run lasts long enough
    // that a slot freed a moment after they were submitted still lets all four overlap.)
    for _ in 0..4 {
        server
            .invoke_async(PROJECT, "recurse", json!({"depth": 0, "sleep": 5}))
            .await;
    }
    wait_for(
        &server,
        "recurse",
        Duration::from_secs(10),
        "four runs at once after the cancel",
        |all| all.iter().filter(|i| i["status"] == "running").count() == 4,
    )
    .await;
    // A run's token reads and waits on the invocations its run started, and no others.
    let peek = invoke_sync_within(
        &server,
        Duration::from_secs(20),
        PROJECT,
        "peek",
        json!({"invocation_id": root}),
    )
    .await;
    assert_eq!(peek["result"], json!([404, 404]), "{peek}");
}
