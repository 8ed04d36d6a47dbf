//! Devbox suspend/resume and disk snapshots: Runloop's own client drives every method
//! (`clients/runloop_disk_check.py`); the host side (what a suspended devbox still holds) and
//! a restart are checked here, on SQLite and PostgreSQL; and bad input gets clear 4xx answers.

mod common;

use common::{Db, Server};
use serde_json::{json, Value};

#[tokio::test]
async fn suspend_resume_and_snapshots_with_the_runloop_client() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    common::run_client_check(
        &server,
        "runloop_disk_check.py",
        &[],
        "all disk calls worked",
    )
    .await;
}

/// The server's mount table (it mounts devboxes in a private mount namespace).
fn server_mounts(server: &Server) -> String {
    std::fs::read_to_string(format!("/proc/{}/mounts", server.pid())).unwrap()
}

/// Cgroup directories of devbox `id` anywhere under /sys/fs/cgroup.
fn cgroups_of(id: &str) -> Vec<String> {
    let out = std::process::Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "6", "-type", "d", "-name"])
        .arg(format!("openloop-{id}*"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

async fn post_json(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = server.post(path).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn suspended_devboxes_survive_a_restart(db: Db) {
    let Some(mut server) = Server::start(db).await else {
        return;
    };
    let id = server
        .create_devbox(json!({
            "environment_variables": {"WHO": "me"},
            "entrypoint": "sleep 1000",
        }))
        .await;
    let (code, _, _) = server
        .exec(
            &id,
            "echo on-disk > kept.txt && head -c 1048576 /dev/zero > mb.bin",
        )
        .await;
    assert_eq!(code, 0);
    let root = server.data.path().join("devboxes").join(&id);
    assert!(server_mounts(&server).contains(root.join("root").to_str().unwrap()));
    assert!(!cgroups_of(&id).is_empty(), "a running devbox has cgroups");

    let (status, v) = post_json(&server, &format!("/v1/devboxes/{id}/suspend"), json!({})).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("suspended")),
        "{v}"
    );
    // Its processes, cgroups and mounts are gone; its disk image stays.
    let mounts = server_mounts(&server);
    assert!(!mounts.contains(root.to_str().unwrap()), "{mounts}");
    assert_eq!(cgroups_of(&id), Vec::<String>::new());
    assert!(root.join("disk.img").exists());

    // A snapshot of the suspended devbox, then a restart (as after a crash).
    let (status, snap) = post_json(
        &server,
        &format!("/v1/devboxes/{id}/snapshot_disk"),
        json!({"name": "before-restart", "metadata": {"k": "v"}}),
    )
    .await;
    assert_eq!(status, 200, "{snap}");
    let snap_id = snap["id"].as_str().unwrap().to_string();
    let running = server.create_devbox(json!({})).await;
    server.kill9();
    server.spawn().await;

    let v = server.get_json(&format!("/v1/devboxes/{id}")).await;
    assert_eq!(
        v["status"], "suspended",
        "a suspended devbox stays suspended: {v}"
    );
    let v = server.get_json(&format!("/v1/devboxes/{running}")).await;
    assert_eq!(
        v["status"], "shutdown",
        "a running one does not survive: {v}"
    );
    assert!(root.join("disk.img").exists());
    let list = server
        .get_json(&format!("/v1/devboxes/disk_snapshots?devbox_id={id}"))
        .await;
    assert_eq!(list["snapshots"][0]["id"], snap_id.as_str(), "{list}");
    assert_eq!(list["snapshots"][0]["metadata"]["k"], "v", "{list}");

    let (status, v) = post_json(&server, &format!("/v1/devboxes/{id}/resume"), json!({})).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("running")),
        "{v}"
    );
    let (_, out, _) = server
        .exec(
            &id,
            "cat kept.txt; stat -c %s mb.bin; echo $WHO; pgrep -xc sleep",
        )
        .await;
    assert_eq!(out, "on-disk\n1048576\nme\n1\n");

    let child = server
        .create_devbox(json!({ "snapshot_id": snap_id }))
        .await;
    let (_, out, _) = server.exec(&child, "cat kept.txt").await;
    assert_eq!(out, "on-disk\n");
    let (status, v) = post_json(
        &server,
        &format!("/v1/devboxes/disk_snapshots/{snap_id}/delete"),
        json!({}),
    )
    .await;
    assert_eq!(status, 409, "in use: {v}");
    server.shutdown_devbox(&child).await;
    let (status, _) = post_json(
        &server,
        &format!("/v1/devboxes/disk_snapshots/{snap_id}/delete"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(!server.data.path().join("snapshots").join(&snap_id).exists());

    // Shutting down a suspended devbox removes its disk.
    let (status, _) = post_json(&server, &format!("/v1/devboxes/{id}/suspend"), json!({})).await;
    assert_eq!(status, 200);
    server.shutdown_devbox(&id).await;
    assert!(!root.exists(), "the suspended devbox's disk is gone");
}

#[tokio::test]
async fn suspended_devboxes_survive_a_restart_sqlite() {
    suspended_devboxes_survive_a_restart(Db::Sqlite).await;
}

#[tokio::test]
async fn suspended_devboxes_survive_a_restart_postgres() {
    suspended_devboxes_survive_a_restart(Db::Postgres).await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let id = server.create_devbox(json!({})).await;
    let (status, snap) = post_json(
        &server,
        &format!("/v1/devboxes/{id}/snapshot_disk"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{snap}");
    let snap_id = snap["id"].as_str().unwrap();

    // Unknown snapshot ids: 404 everywhere.
    for (method, path) in [
        ("GET", "/v1/devboxes/disk_snapshots/snp_nope/status"),
        ("POST", "/v1/devboxes/disk_snapshots/snp_nope"),
        ("POST", "/v1/devboxes/disk_snapshots/snp_nope/delete"),
    ] {
        let r = match method {
            "GET" => server.get(path),
            _ => server.post(path).json(&json!({})),
        };
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
    }
    let (status, v) = post_json(&server, "/v1/devboxes", json!({"snapshot_id": "snp_nope"})).await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("snp_nope"),
        "{v}"
    );

    // Another key's snapshot does not exist for this one.
    let (status, other) = post_json(&server, "/v1/keys", json!({"name": "other"})).await;
    assert_eq!(status, 201, "{other}");
    let other_key = other["secret"].as_str().unwrap();
    let as_other = |path: &str| {
        server
            .http
            .post(format!("{}{path}", server.url))
            .bearer_auth(other_key)
    };
    for path in [
        format!("/v1/devboxes/disk_snapshots/{snap_id}"),
        format!("/v1/devboxes/disk_snapshots/{snap_id}/delete"),
    ] {
        let r = as_other(&path)
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = as_other("/v1/devboxes")
        .json(&json!({"snapshot_id": snap_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = server
        .http
        .get(format!("{}/v1/devboxes/disk_snapshots", server.url))
        .bearer_auth(other_key)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["snapshots"], json!([]), "{v}");
    assert_eq!(v["total_count"], 0, "{v}");
    // The owner still sees it, untouched.
    let v = server
        .get_json(&format!("/v1/devboxes/disk_snapshots/{snap_id}/status"))
        .await;
    assert_eq!(v["status"], "complete", "{v}");
    assert_eq!(v["snapshot"]["name"], Value::Null, "{v}");

    // Resume of a running devbox, suspend of a shut-down one: 409 saying why.
    let (status, v) = post_json(&server, &format!("/v1/devboxes/{id}/resume"), json!({})).await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("only a suspended devbox"));
    let gone = server.create_devbox(json!({})).await;
    server.shutdown_devbox(&gone).await;
    let (status, v) = post_json(&server, &format!("/v1/devboxes/{gone}/suspend"), json!({})).await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("shutdown"),
        "{v}"
    );
    let (status, _) = post_json(
        &server,
        &format!("/v1/devboxes/{gone}/snapshot_disk"),
        json!({}),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = post_json(&server, "/v1/devboxes/dbx_nope/suspend", json!({})).await;
    assert_eq!(status, 404);

    // Malformed bodies and parameters: 400, nothing recorded.
    for (path, body) in [
        (format!("/v1/devboxes/{id}/snapshot_disk"), "{not json"),
        (
            format!("/v1/devboxes/{id}/snapshot_disk"),
            r#"{"metadata": ["a"]}"#,
        ),
        (
            format!("/v1/devboxes/{id}/snapshot_disk_async"),
            r#"{"name": 5}"#,
        ),
        (
            format!("/v1/devboxes/disk_snapshots/{snap_id}"),
            r#"{"metadata": {"k": 1}}"#,
        ),
        ("/v1/devboxes".to_string(), r#"{"snapshot_id": 7}"#),
        (
            "/v1/devboxes".to_string(),
            r#"{"launch_parameters": {"after_idle": {"idle_time_seconds": 5, "on_idle": "nap"}}}"#,
        ),
        (
            "/v1/devboxes".to_string(),
            r#"{"launch_parameters": {"after_idle": {"idle_time_seconds": 5, "on_idle": "suspend"}, "lifecycle": {"after_idle": {"idle_time_seconds": 6, "on_idle": "suspend"}}}}"#,
        ),
    ] {
        let r = server
            .post(&path)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{path} {body}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
    }
    let long = "x".repeat(1001);
    let (status, v) = post_json(
        &server,
        &format!("/v1/devboxes/{id}/snapshot_disk"),
        json!({ "commit_message": long }),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    for query in ["limit=abc", "include_total_count=maybe", "metadata[]=x"] {
        let r = server
            .get(&format!("/v1/devboxes/disk_snapshots?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
    }
    let v = server.get_json("/v1/devboxes/disk_snapshots").await;
    assert_eq!(
        v["total_count"], 1,
        "the refused requests recorded nothing: {v}"
    );
}

/// Sandboxes launched while a devbox runs (here a deployment's build, manifest import and
/// warm process) copy the server's mounts, the devbox's disk among them, into their own
/// mount namespaces; the kernel can keep such a copy alive after the devbox is suspended.
/// Resuming (twice) and snapshotting the suspended devbox must still work, on one file
/// system, with its files intact.
#[tokio::test]
async fn suspend_and_resume_while_other_sandboxes_hold_copies_of_its_mounts() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let id = server.create_devbox(json!({})).await;
    let (code, _, _) = server.exec(&id, "echo one > f.txt").await;
    assert_eq!(code, 0);
    server.deploy_ok(&common::fixture("test_agent"));
    let image = server
        .data
        .path()
        .join("devboxes")
        .join(&id)
        .join("disk.img");
    for (round, expect) in [(1, "one\n"), (2, "one\nround 1\n")] {
        let (status, v) =
            post_json(&server, &format!("/v1/devboxes/{id}/suspend"), json!({})).await;
        assert_eq!(
            (status, v["status"].as_str()),
            (200, Some("suspended")),
            "{v}"
        );
        let attached = std::fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
            .any(|b| b.trim() == image.to_str().unwrap());
        eprintln!("round {round}: image still attached to a loop device after suspend: {attached}");
        let (status, snap) = post_json(
            &server,
            &format!("/v1/devboxes/{id}/snapshot_disk"),
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "{snap}");
        let (status, v) = post_json(&server, &format!("/v1/devboxes/{id}/resume"), json!({})).await;
        assert_eq!(
            (status, v["status"].as_str()),
            (200, Some("running")),
            "{v}"
        );
        let (code, out, _) = server
            .exec(&id, &format!("cat f.txt; echo round {round} >> f.txt"))
            .await;
        assert_eq!((code, out.as_str()), (0, expect));
        let child = server
            .create_devbox(json!({"snapshot_id": snap["id"]}))
            .await;
        let (_, out, _) = server.exec(&child, "cat f.txt").await;
        assert_eq!(out, expect, "the snapshot taken while suspended");
        server.shutdown_devbox(&child).await;
    }
}
