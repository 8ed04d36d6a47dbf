//! The devbox API driven by Runloop's own Python client (`runloop_api_client` from PyPI).

mod common;

use common::{Db, Server};
use std::path::PathBuf;
use std::process::Command;

/// The client release these tests are known to pass with. Pinned so that a new release
/// cannot change what the test checks without anyone noticing; move it deliberately.
const RUNLOOP_CLIENT: &str = "runloop_api_client==3.0.0";

/// A virtual environment with the real client, built once and cached under `target/`
/// (rebuilt when the pin changes).
fn client_venv() -> PathBuf {
    let dir = common::repo_root().join("target/test-venvs/runloop-client");
    let python = dir.join("bin/python");
    if std::fs::read_to_string(dir.join(".ready")).is_ok_and(|v| v == RUNLOOP_CLIENT) {
        return python;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ok = Command::new("uv")
        .args(["venv", "--quiet", "--python", "/usr/bin/python3"])
        .arg(&dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "uv venv failed");
    let ok = Command::new("uv")
        .args(["pip", "install", "--quiet", "--python"])
        .arg(&python)
        .arg(RUNLOOP_CLIENT)
        .status()
        .unwrap()
        .success();
    assert!(ok, "installing {RUNLOOP_CLIENT} from PyPI failed");
    std::fs::write(dir.join(".ready"), RUNLOOP_CLIENT).unwrap();
    python
}

#[tokio::test]
async fn runloop_python_client_works_unchanged() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let python = client_venv();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/runloop_client_check.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("OPENLOOP_URL", &server.url)
        .env("OPENLOOP_API_KEY", &server.key)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the client check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all devbox calls worked"), "{stdout}");
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
