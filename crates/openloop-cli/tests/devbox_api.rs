//! The devbox API driven by Runloop's own Python client (`runloop_api_client` from PyPI).

mod common;

use common::{Db, Server};
use std::path::PathBuf;
use std::process::Command;

/// A virtual environment with the real client, built once and cached under `target/`.
fn client_venv() -> PathBuf {
    let dir = common::repo_root().join("target/test-venvs/runloop-client");
    let python = dir.join("bin/python");
    if dir.join(".ready").exists() {
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
        .arg("runloop_api_client")
        .status()
        .unwrap()
        .success();
    assert!(ok, "installing runloop_api_client from PyPI failed");
    std::fs::write(dir.join(".ready"), "").unwrap();
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
