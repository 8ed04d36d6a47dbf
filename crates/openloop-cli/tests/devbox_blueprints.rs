//! Blueprints: Runloop's own client drives every method (`clients/runloop_blueprint_check.py`);
//! the host side (the shared layer, its owners, a devbox from a blueprint starting without a
//! copy, another key seeing nothing, a restart) is checked here, on SQLite and PostgreSQL.

mod common;

use common::{Db, Server};
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

#[tokio::test]
async fn blueprints_with_the_runloop_client() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let out = common::run_client_check(
        &server,
        "runloop_blueprint_check.py",
        &[],
        "all blueprint calls worked",
    )
    .await;
    for line in out.lines().filter(|l| l.contains("build:")) {
        eprintln!("{line}");
    }
    // The two blueprints of identical content share one layer directory, kept after one
    // of them was deleted; the layer's root files are host root's.
    let kept = out
        .lines()
        .find_map(|l| l.strip_prefix("kept blueprint: "))
        .unwrap();
    let v = server.get_json(&format!("/v1/blueprints/{kept}")).await;
    assert_eq!(v["status"], "build_complete", "{v}");
    let layers: Vec<_> = std::fs::read_dir(server.data.path().join("blueprints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // bp-base (shared by its identical twin), bp-child, bp-grandchild, bp-pip, bp-secret,
    // bp-root.
    assert_eq!(layers.len(), 6, "{layers:?}");
    let with_marker = layers
        .iter()
        .find(|l| {
            l.join("usr/local/share/bp/marker").exists() && !l.join("opt/app/child.txt").exists()
        })
        .expect("the base blueprint's layer");
    let meta = |p: &str| std::fs::symlink_metadata(with_marker.join(p)).unwrap();
    assert_eq!(meta("usr/local/share/bp/marker").uid(), 0);
    assert_eq!(meta("opt/app/built.txt").uid(), 0);
    assert_eq!(meta("home/user/notes.txt").uid(), 100_000);
    // No captured layer (blueprint or snapshot, of builds and root devboxes alike) holds a
    // file of the uid root of a build or root devbox runs as.
    for dir in ["blueprints", "snapshots"] {
        let owned = owned_by(&server.data.path().join(dir), 100_002);
        assert_eq!(owned, Vec::<std::path::PathBuf>::new(), "{dir}");
    }
}

/// Paths under `dir` owned (uid or gid) by `id`.
fn owned_by(dir: &std::path::Path, id: u32) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.uid() == id || m.gid() == id {
            out.push(e.path());
        }
        if m.is_dir() {
            out.extend(owned_by(&e.path(), id));
        }
    }
    out
}

async fn post_json(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = server.post(path).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Create a blueprint over HTTP and wait for the end of its build.
async fn build(server: &Server, body: Value) -> Value {
    let (status, v) = post_json(server, "/v1/blueprints", body).await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let v = server.get_json(&format!("/v1/blueprints/{id}")).await;
        if !matches!(v["status"].as_str(), Some("queued" | "building")) {
            return v;
        }
        assert!(Instant::now() < deadline, "build did not end: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn owners_layers_and_restart(db: Db) {
    let Some(mut server) = Server::start(db).await else {
        return;
    };
    let bp = build(
        &server,
        json!({
            "name": "host-side",
            "dockerfile": "FROM openloop-base\nENV WHERE=layer\nWORKDIR /srv\nRUN head -c 1048576 /dev/urandom > blob && sha256sum blob > blob.sum\n",
        }),
    )
    .await;
    assert_eq!(bp["status"], "build_complete", "{bp}");
    let id = bp["id"].as_str().unwrap().to_string();

    // Starting from it copies nothing: the devbox's own disk holds only what it writes.
    let plain = Instant::now();
    let base_box = server
        .create_devbox(json!({"network": "none", "launch_parameters": {"custom_cpu_cores": 2}}))
        .await;
    let plain = plain.elapsed();
    let started = Instant::now();
    let dbx = server
        .create_devbox(json!({"blueprint_id": id, "launch_parameters": {"custom_cpu_cores": 2}}))
        .await;
    let from_blueprint = started.elapsed();
    eprintln!(
        "devbox create: {:.0} ms from the base image, {:.0} ms from a blueprint with a 1 MiB layer",
        plain.as_secs_f64() * 1e3,
        from_blueprint.as_secs_f64() * 1e3
    );
    let (code, out, err) = server
        .exec(&dbx, "pwd; echo $WHERE; sha256sum -c blob.sum")
        .await;
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out, "/srv\nlayer\nblob: OK\n");
    let upper = server
        .data
        .path()
        .join("devboxes")
        .join(&dbx)
        .join("disk/upper");
    let copied: u64 = walk_bytes(&upper);
    assert!(
        copied < 64 * 1024,
        "the devbox's own layer holds {copied} bytes"
    );
    server.shutdown_devbox(&base_box).await;

    // Another key sees nothing of it.
    let (status, other) = post_json(&server, "/v1/keys", json!({"name": "other"})).await;
    assert_eq!(status, 201, "{other}");
    let other_key = other["secret"].as_str().unwrap().to_string();
    for path in [
        format!("/v1/blueprints/{id}"),
        format!("/v1/blueprints/{id}/logs"),
    ] {
        let r = server
            .http
            .get(format!("{}{path}", server.url))
            .bearer_auth(&other_key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    for (path, body) in [
        (format!("/v1/blueprints/{id}/delete"), json!({})),
        ("/v1/devboxes".to_string(), json!({"blueprint_id": id})),
        (
            "/v1/devboxes".to_string(),
            json!({"blueprint_name": "host-side"}),
        ),
        (
            "/v1/blueprints".to_string(),
            json!({"name": "x", "dockerfile": "FROM host-side\n"}),
        ),
    ] {
        let r = server
            .http
            .post(format!("{}{path}", server.url))
            .bearer_auth(&other_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert!(matches!(status, 400 | 404), "{path}: {status}");
    }
    let r = server
        .http
        .get(format!("{}/v1/blueprints", server.url))
        .bearer_auth(&other_key)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["blueprints"].clone(), v["total_count"].clone()),
        (json!([]), json!(0)),
        "{v}"
    );

    // A restart keeps built blueprints and their layers; suspend and resume keep WORKDIR.
    let (status, v) = post_json(&server, &format!("/v1/devboxes/{dbx}/suspend"), json!({})).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("suspended")),
        "{v}"
    );
    server.kill9();
    server.spawn().await;
    let (status, v) = post_json(&server, &format!("/v1/devboxes/{dbx}/resume"), json!({})).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("running")),
        "{v}"
    );
    let (_, out, _) = server
        .exec(&dbx, "pwd; echo $WHERE; sha256sum -c blob.sum")
        .await;
    assert_eq!(out, "/srv\nlayer\nblob: OK\n");
    let (status, v) = post_json(&server, &format!("/v1/blueprints/{id}/delete"), json!({})).await;
    assert_eq!(status, 409, "a suspended devbox still uses it: {v}");
    server.shutdown_devbox(&dbx).await;
    let (status, v) = post_json(&server, &format!("/v1/blueprints/{id}/delete"), json!({})).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("deleted")), "{v}");
    let left = std::fs::read_dir(server.data.path().join("blueprints"))
        .unwrap()
        .count();
    assert_eq!(
        left, 0,
        "the last blueprint of a content takes its layer along"
    );
    let witness = server.create_devbox(json!({})).await;
    server.assert_healthy(&witness).await;
}

fn walk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            walk_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

#[tokio::test]
async fn owners_layers_and_restart_sqlite() {
    owners_layers_and_restart(Db::Sqlite).await;
}

#[tokio::test]
async fn owners_layers_and_restart_postgres() {
    owners_layers_and_restart(Db::Postgres).await;
}

/// A build the server was running when it died fails at the next start, with a log line
/// saying so; nothing of it is left on disk; the same content then builds.
#[tokio::test]
async fn a_build_cut_by_a_restart_fails_and_leaves_nothing() {
    let mut server = Server::start(Db::Sqlite).await.unwrap();
    let body = json!({
        "name": "cut",
        "dockerfile": "FROM openloop-base\nRUN echo started && sleep 600\n",
    });
    let (status, v) = post_json(&server, "/v1/blueprints", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = server.get_json(&format!("/v1/blueprints/{id}/logs")).await;
        if logs["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["message"] == "started")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the build did not start: {logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the per-key limit of unfinished builds, a create is refused (429), not queued.
    let mut queued = Vec::new();
    let refused = loop {
        let (status, v) = post_json(
            &server,
            "/v1/blueprints",
            json!({"name": "pile", "system_setup_commands": [format!("sleep 600 # {}", queued.len())]}),
        )
        .await;
        if status != 200 {
            break (status, v);
        }
        queued.push(v["id"].as_str().unwrap().to_string());
        assert!(queued.len() < 100, "no limit on unfinished builds");
    };
    assert_eq!(refused.0, 429, "{}", refused.1);
    assert_eq!(queued.len(), 15, "16 unfinished builds per key");

    server.kill9();
    server.spawn().await;
    let v = server.get_json(&format!("/v1/blueprints/{id}")).await;
    assert_eq!(
        (v["status"].as_str(), v["failure_reason"].as_str()),
        (Some("failed"), Some("build_failed")),
        "{v}"
    );
    let logs = server.get_json(&format!("/v1/blueprints/{id}/logs")).await;
    let last = logs["logs"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["level"], "error", "{logs}");
    assert!(
        last["message"].as_str().unwrap().contains("server stopped"),
        "{logs}"
    );
    for q in &queued {
        let v = server.get_json(&format!("/v1/blueprints/{q}")).await;
        assert_eq!(v["status"], "failed", "{v}");
    }
    let devboxes = std::fs::read_dir(server.data.path().join("devboxes"))
        .map(|d| d.count())
        .unwrap_or(0);
    let layers = std::fs::read_dir(server.data.path().join("blueprints"))
        .map(|d| d.count())
        .unwrap_or(0);
    // At most the warm pool's sandboxes are left in the devbox directory.
    assert!(
        devboxes <= 2 && layers == 0,
        "{devboxes} devbox dirs, {layers} layers"
    );
    let quick = json!({"name": "cut", "dockerfile": "FROM openloop-base\nRUN echo again\n"});
    assert_eq!(build(&server, quick).await["status"], "build_complete");
}
