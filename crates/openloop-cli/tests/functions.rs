//! Running functions: results, failures, logs, schemas, devboxes of a run; on both databases.

mod common;

use common::{fixture, Db, Server};
use serde_json::{json, Value};
use std::time::Duration;

async fn logs_of(server: &Server, id: &str) -> Vec<Value> {
    server
        .get_json(&format!("/v1/functions/invocations/{id}/logs"))
        .await["logs"]
        .as_array()
        .unwrap()
        .clone()
}

async fn functions(db: Db) {
    let Some(server) = Server::start(db).await else {
        return;
    };
    server.deploy_ok(&fixture("test_agent"));

    // Results, defaults and nested models.
    let (code, inv) = server
        .invoke_sync(
            "test_agent",
            "echo",
            json!({"text": "ab", "times": 2, "point": {"x": 1, "y": 2}}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        inv["result"],
        json!({"text": "abab", "point": {"x": 1, "y": 2}})
    );
    let (_, inv) = server
        .invoke_sync("test_agent", "echo", json!({"text": "z"}))
        .await;
    assert_eq!(inv["result"]["text"], "z");
    let (_, inv) = server
        .invoke_sync("test_agent", "async_echo", json!({"text": "hi"}))
        .await;
    assert_eq!(inv["result"], "HI");

    // Schema violations are refused before anything runs, naming the field.
    let before = server
        .get_json("/v1/functions/invocations?function=echo&limit=1000")
        .await["invocations"]
        .as_array()
        .unwrap()
        .len();
    for (req, field) in [
        (json!({}), "request.text"),
        (json!({"text": "a", "times": "many"}), "request.times"),
        (json!({"text": "a", "point": {"x": 1}}), "request.point.y"),
        (json!({"text": "a", "bogus": 1}), "request.bogus"),
    ] {
        let (code, body) = server.invoke_sync("test_agent", "echo", req.clone()).await;
        assert_eq!(code, 400, "{req}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {body}"
        );
    }
    let after = server
        .get_json("/v1/functions/invocations?function=echo&limit=1000")
        .await["invocations"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        before, after,
        "refused requests must not create invocations"
    );

    // print and logging are captured with their stream and level.
    let (_, inv) = server
        .invoke_sync("test_agent", "noisy", json!({"n": 3}))
        .await;
    assert_eq!(inv["result"], 3);
    let logs = logs_of(&server, inv["id"].as_str().unwrap()).await;
    let lines: Vec<(String, String)> = logs
        .iter()
        .map(|l| {
            (
                l["stream"].as_str().unwrap().to_string(),
                l["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for i in 0..3 {
        assert!(
            lines.contains(&("stdout".into(), format!("stdout line {i}"))),
            "{lines:?}"
        );
    }
    assert!(
        lines.contains(&("stderr".into(), "to stderr".into())),
        "{lines:?}"
    );
    let info = logs
        .iter()
        .find(|l| l["message"] == "info from logging")
        .expect("logging line");
    assert_eq!(info["stream"], "log");
    assert_eq!(info["level"], "INFO");
    assert!(info["ts_ms"].as_i64().unwrap() >= inv["started_at_ms"].as_i64().unwrap() - 1000);
    let cli = std::process::Command::new(common::bin())
        .args([
            "logs",
            inv["id"].as_str().unwrap(),
            "--server",
            &server.url,
            "--api-key",
            &server.key,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success());
    assert!(
        text.contains("[stdout] stdout line 2")
            && text.contains("[log WARNING] warning from logging"),
        "{text}"
    );

    // Exceptions: status failure with type, message and traceback.
    let (code, inv) = server
        .invoke_sync("test_agent", "fails", json!({"message": "boom"}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(inv["status"], "failure");
    assert_eq!(inv["error"]["type"], "ValueError");
    assert_eq!(inv["error"]["message"], "boom");
    assert!(inv["error"]["traceback"]
        .as_str()
        .unwrap()
        .contains("raise ValueError(message)"));
    assert!(inv["result"].is_null());

    // A process that dies without a result fails alone; the next run works.
    let (_, inv) = server
        .invoke_sync("test_agent", "hard_exit", json!({"code": 3}))
        .await;
    assert_eq!(inv["status"], "failure");
    assert_eq!(inv["error"]["type"], "ProcessExited");
    assert!(
        inv["error"]["message"].as_str().unwrap().contains("code 3"),
        "{inv}"
    );
    let (_, inv) = server
        .invoke_sync("test_agent", "echo", json!({"text": "still here"}))
        .await;
    assert_eq!(inv["result"]["text"], "still here");

    // Output that imitates the protocol cannot forge a result.
    let (_, inv) = server
        .invoke_sync("test_agent", "fake_frames", json!({}))
        .await;
    assert_eq!(inv["result"], "genuine", "{inv}");

    // A run that raised still has its devbox shut down.
    let (_, inv) = server
        .invoke_sync("test_agent", "devbox_then_fail", json!({}))
        .await;
    assert_eq!(inv["status"], "failure");
    assert_eq!(
        inv["error"]["message"], "failed after using a devbox",
        "{inv}"
    );
    let logs = logs_of(&server, inv["id"].as_str().unwrap()).await;
    let devbox_id = logs
        .iter()
        .find_map(|l| l["message"].as_str().unwrap().strip_prefix("DEVBOX="))
        .expect("the run printed its devbox id")
        .to_string();
    let devbox = server.get_json(&format!("/v1/devboxes/{devbox_id}")).await;
    assert_eq!(devbox["status"], "shutdown", "{devbox}");
    server.assert_torn_down(&devbox_id).await;

    // The SDK's devbox tools: env and cwd, async exec, binary upload/download, kill.
    let (_, inv) = server
        .invoke_sync("test_agent", "devbox_tools", json!({}))
        .await;
    assert_eq!(
        inv["result"],
        json!({"async_exit": 4, "async_out": "later\n", "binary_ok": true, "empty": "",
               "killed_status": "completed", "devbox_status": "running"}),
        "{inv}"
    );

    // Function code runs sandboxed: no data directory, read-only code, a private scratch.
    let data = server.data.path().display().to_string();
    let (_, inv) = server
        .invoke_sync("test_agent", "look_around", json!({"data_dir": data}))
        .await;
    assert_eq!(
        inv["result"],
        json!({"database": false, "admin_key": false, "devboxes": false, "own_code": true,
               "code_writable": false, "scratch_writable": true, "uid": 1000, "host_processes": false}),
        "{inv}"
    );

    // Listing and filtering.
    let failed = server
        .get_json("/v1/functions/invocations?status=failure&limit=100")
        .await;
    assert!(failed["invocations"].as_array().unwrap().len() >= 3);
    assert!(failed["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "failure"));
    let fns = server.get_json("/v1/functions").await;
    let echo = fns["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "echo")
        .unwrap();
    assert_eq!(echo["request_schema"]["required"], json!(["text"]));
    assert!(fns["functions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "devbox_then_fail"
            && f["request_schema"]["properties"]
                .as_object()
                .unwrap()
                .is_empty()));

    // invoke_async answers at once; the run finishes in the background.
    let r = server
        .post("/v1/functions/test_agent/sleepy/invoke_async")
        .json(&json!({"request": {"seconds": 1.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(
        matches!(v["status"].as_str(), Some("queued" | "running")),
        "{v}"
    );
    let done = server
        .wait_invocation(v["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["result"], "slept 1.0");
}

#[tokio::test]
async fn functions_on_sqlite() {
    functions(Db::Sqlite).await;
}

#[tokio::test]
async fn functions_on_postgres() {
    functions(Db::Postgres).await;
}

/// On PostgreSQL an `invoke_sync` run's record reaches the disk with its outcome. A record
/// lost meanwhile (as a crash of PostgreSQL before that flush would lose it; here deleted)
/// answers 503 saying so, not 404 as if the caller had named no such run. With
/// `--postgres-flush-run-start` (every record flushed before its run starts) the server runs
/// and answers the same.
#[tokio::test]
async fn a_sync_run_whose_record_is_lost_answers_503_on_postgres() {
    for flush in [false, true] {
        let env: &[(&str, &str)] = if flush {
            &[("OPENLOOP_POSTGRES_FLUSH_RUN_START", "true")]
        } else {
            &[]
        };
        let Some(server) = Server::start_with(Db::Postgres, env).await else {
            return;
        };
        server.deploy_ok(&fixture("test_agent"));
        let (code, inv) = server
            .invoke_sync("test_agent", "echo", json!({"text": "ab"}))
            .await;
        assert_eq!(code, 200, "{inv}");
        assert_eq!(inv["result"]["text"], "ab");

        let call = server.invoke_sync("test_agent", "sleepy", json!({"seconds": 1.5}));
        let lose = async {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let id = loop {
                let list = server
                    .get_json("/v1/functions/invocations?function=sleepy&status=running")
                    .await;
                if let Some(id) = list["invocations"][0]["id"].as_str() {
                    break id.to_string();
                }
                assert!(std::time::Instant::now() < deadline, "{list}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            use sqlx::Connection;
            let url = server.database_url.as_deref().unwrap();
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query("DELETE FROM invocations WHERE id = $1")
                .bind(&id)
                .execute(&mut db)
                .await
                .unwrap();
        };
        let ((code, answer), ()) = tokio::join!(call, lose);
        assert_eq!(code, 503, "flush {flush}: {answer}");
        assert!(
            answer.to_string().contains("was lost by the database"),
            "{answer}"
        );
    }
}
