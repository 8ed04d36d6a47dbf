//! The foundation's acceptance test: the seed's example and curl commands, verbatim,
//! against a real server, on SQLite and on PostgreSQL.

mod common;

use common::{example, Db, Server};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// Run one of the seed's curl commands with the hosted address replaced.
fn curl(server: &Server, command: &str) -> Value {
    let cmd = command.replace("https://api.runloop.ai", &server.url);
    let out = Command::new("bash")
        .arg("-c")
        .arg(&cmd)
        .env("RUNLOOP_API_KEY", &server.key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{cmd}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

const INVOKE_SYNC: &str = r#"curl -X POST https://api.runloop.ai/v1/functions/example_python_agent/example_agent/invoke_sync -H "Authorization: Bearer $RUNLOOP_API_KEY" -H "Content-Type: application/json" --data '{"request": {"name": "Bob"}}'"#;
const INVOKE_ASYNC: &str = r#"curl -X POST https://api.runloop.ai/v1/functions/example_python_agent/example_agent/invoke_async -H "Authorization: Bearer $RUNLOOP_API_KEY" -H "Content-Type: application/json" --data '{"request": {"name": "Bob"}}'"#;
const GET_INVOCATION: &str = r#"curl -G https://api.runloop.ai/v1/functions/invocations/<YOUR_INVOCATION_ID> -H "Authorization: Bearer $RUNLOOP_API_KEY""#;

async fn seed_example(db: Db) {
    let Some(server) = Server::start(db).await else {
        return;
    };
    let (ok, out, err) = server.deploy_cli(&example(), &[]);
    assert!(ok, "deploy failed:\n{out}\n{err}");
    assert!(
        out.contains("installing requirements.txt"),
        "the build log is shown: {out}"
    );
    assert!(out.contains("example_agent"), "{out}");

    let inv = curl(&server, INVOKE_SYNC);
    assert_eq!(inv["status"], "success", "{inv}");
    assert_eq!(inv["project_name"], "example_python_agent");
    assert_eq!(inv["function_name"], "example_agent");
    assert_eq!(inv["request"], serde_json::json!({"name": "Bob"}));
    assert!(inv["error"].is_null());
    for f in ["created_at_ms", "started_at_ms", "ended_at_ms"] {
        assert!(inv[f].as_i64().unwrap() > 0, "{f} in {inv}");
    }
    let result = inv["result"].as_str().unwrap();
    assert!(result.contains("executed hello from devbox"), "{result}");
    assert!(result.contains("User: Bob"), "{result}");

    // The run's devbox was real and is shut down now that the run has ended.
    let devbox_id = result
        .split("Devbox ID: ")
        .nth(1)
        .unwrap()
        .split('\n')
        .next()
        .unwrap();
    let devbox = server.get_json(&format!("/v1/devboxes/{devbox_id}")).await;
    assert_eq!(devbox["status"], "shutdown", "{devbox}");
    assert_eq!(devbox["initiator_id"], inv["id"]);
    server.assert_torn_down(devbox_id).await;

    let queued = curl(&server, INVOKE_ASYNC);
    let id = queued["id"].as_str().unwrap().to_string();
    assert!(
        matches!(queued["status"].as_str(), Some("queued" | "running")),
        "{queued}"
    );
    server.wait_invocation(&id, Duration::from_secs(60)).await;
    let done = curl(
        &server,
        &GET_INVOCATION.replace("<YOUR_INVOCATION_ID>", &id),
    );
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["status"], "success");
    assert!(done["result"].as_str().unwrap().contains("User: Bob"));
}

#[tokio::test]
async fn seed_example_on_sqlite() {
    seed_example(Db::Sqlite).await;
}

#[tokio::test]
async fn seed_example_on_postgres() {
    seed_example(Db::Postgres).await;
}
