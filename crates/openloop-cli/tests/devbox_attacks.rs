//! Hostile commands inside devboxes. After each attack the host and the server are healthy
//! and another devbox (the witness) still works.

mod common;

use common::{Db, Server};
use serde_json::{json, Value};
use std::time::Duration;

async fn setup() -> (Server, String) {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let witness = server.create_devbox(json!({"name": "witness"})).await;
    (server, witness)
}

#[tokio::test]
async fn host_files_processes_and_services_are_out_of_reach() {
    let (server, witness) = setup().await;
    let d = server.create_devbox(json!({"network": "outbound"})).await;
    let data = server.data.path().display().to_string();

    // Host files and the Openloop data directory (database, admin key) do not exist inside.
    for path in [
        format!("{data}/openloop.db"),
        format!("{data}/admin-key"),
        data.clone(),
        common::repo_root().join("Cargo.toml").display().to_string(),
        "/root/.bashrc".to_string(),
    ] {
        let (code, _, _) = server.exec(&d, &format!("ls -la {path}")).await;
        assert_ne!(code, 0, "{path} is visible inside the devbox");
    }
    let (_, out, _) = server.exec(&d, "cat /etc/hostname; id -u").await;
    assert_eq!(out, "devbox\n1000\n");

    // Host processes: not visible, not signalable.
    let pid = server.pid();
    let (code, _, _) = server.exec(&d, &format!("kill -9 {pid}")).await;
    assert_ne!(code, 0);
    let (_, out, _) = server.exec(&d, "ps -e --no-headers | wc -l").await;
    assert!(out.trim().parse::<u32>().unwrap() < 10, "{out}");

    // The server's port and PostgreSQL on the host's loopback: unreachable, with and without network.
    for target in [
        format!("127.0.0.1:{}", server.port),
        "127.0.0.1:5432".into(),
        format!("10.0.2.2:{}", server.port),
        "10.0.2.2:5432".into(),
    ] {
        let (code, _, _) = server
            .exec(
                &d,
                &format!(
                    "timeout 5 bash -c 'echo > /dev/tcp/{}' 2>/dev/null",
                    target.replace(':', "/")
                ),
            )
            .await;
        assert_ne!(code, 0, "{target} reachable from the devbox");
    }
    let (code, _, _) = server
        .exec(
            &witness,
            &format!(
                "timeout 5 bash -c 'echo > /dev/tcp/127.0.0.1/{}'",
                server.port
            ),
        )
        .await;
    assert_ne!(code, 0, "reachable without network");

    // Mounting, raising privileges, writing the image.
    for cmd in [
        "mount -t tmpfs none /mnt",
        "unshare -r true && mount -t proc proc /proc",
        "echo x > /usr/bin/evil",
        "sudo true",
        "su -c true",
    ] {
        let (code, _, _) = server.exec(&d, cmd).await;
        assert_ne!(code, 0, "{cmd} succeeded");
    }
    server.assert_healthy(&witness).await;
}

#[tokio::test]
async fn resource_exhaustion_is_contained() {
    let (server, witness) = setup().await;

    // Fork bomb: held at the pids limit; the server keeps answering; shutdown cleans it up.
    let bomb = server.create_devbox(json!({})).await;
    let r = server
        .post(&format!("/v1/devboxes/{bomb}/execute_async"))
        .json(&json!({"command": "bomb() { bomb | bomb & }; bomb"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.assert_healthy(&witness).await;
    let r = server
        .post(&format!("/v1/devboxes/{bomb}/shutdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "shutdown");

    // Memory: a hog past the limit is killed, the devbox says why, and goes on.
    let small = server
        .create_devbox(json!({"launch_parameters": {"custom_gb_memory": 1}}))
        .await;
    let (code, _, err) = server
        .exec(
            &small,
            "python3 -c 'b = bytearray(3 * 1024**3); print(len(b))'",
        )
        .await;
    assert_ne!(code, 0);
    assert!(
        err.to_lowercase().contains("memory"),
        "the devbox reports the memory limit: {err}"
    );
    let (code, _, _) = server.exec(&small, "true").await;
    assert_eq!(code, 0);

    // Disk: filling it fails inside the devbox, never on the host.
    let disk = server
        .create_devbox(json!({"launch_parameters": {"custom_disk_size": 1}}))
        .await;
    let (code, _, err) = server
        .exec(&disk, "dd if=/dev/zero of=fill bs=1M count=2048")
        .await;
    assert_ne!(code, 0);
    assert!(err.contains("No space left on device"), "{err}");
    let (code, _, _) = server.exec(&disk, "rm fill && echo fine > f").await;
    assert_eq!(code, 0);

    // 1 GB to stdout: the output is capped, the server stays well.
    let (code, out, _) = server
        .exec(&disk, "head -c 1000000000 /dev/zero | tr '\\0' a")
        .await;
    assert_eq!(code, 0);
    assert!(
        out.len() <= 16 << 20 && out.len() > 1 << 20,
        "kept {} bytes",
        out.len()
    );
    server.assert_healthy(&witness).await;
}

#[tokio::test]
async fn fifty_devboxes_at_once() {
    let (server, witness) = setup().await;
    let creates = (0..50).map(|i| server.create_devbox(json!({"name": format!("many-{i}")})));
    let ids: Vec<String> = futures::future::join_all(creates).await;
    let execs = ids.iter().map(|id| server.exec(id, "echo $((6 * 7))"));
    for (code, out, _) in futures::future::join_all(execs).await {
        assert_eq!((code, out.as_str()), (0, "42\n"));
    }
    let server_ref = &server;
    let shutdowns = ids.iter().map(|id| async move {
        server_ref
            .post(&format!("/v1/devboxes/{id}/shutdown"))
            .send()
            .await
            .unwrap()
            .status()
    });
    for status in futures::future::join_all(shutdowns).await {
        assert_eq!(status, 200);
    }
    for id in &ids {
        assert!(
            !server.data.path().join("devboxes").join(id).exists(),
            "{id} left files behind"
        );
    }
    server.assert_healthy(&witness).await;
}

#[tokio::test]
async fn killing_the_agent_or_shutting_down_mid_command() {
    let (server, witness) = setup().await;

    // Killing the in-box agent ends that devbox, which reports a failure; nothing else is hurt.
    let d = server.create_devbox(json!({})).await;
    let _ = server
        .post(&format!("/v1/devboxes/{d}/execute_sync"))
        .json(&json!({"command": "kill -9 $(pgrep -f /opt/openloop/agent)"}))
        .send()
        .await
        .unwrap();
    let r = server
        .post(&format!("/v1/devboxes/{d}/wait_for_status"))
        .json(&json!({"statuses": ["failure"], "timeout_seconds": 20}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["failure_reason"], "execution_failed", "{v}");
    assert!(!server.data.path().join("devboxes").join(&d).exists());
    server.assert_healthy(&witness).await;

    // Shutting down while a command runs kills the command and frees everything.
    let d = server.create_devbox(json!({})).await;
    let r = server
        .post(&format!("/v1/devboxes/{d}/execute_async"))
        .json(&json!({"command": "sleep 600"}))
        .send()
        .await
        .unwrap();
    let exec: Value = r.json().await.unwrap();
    assert_eq!(exec["status"], "running");
    let sync = {
        let http = server.http.clone();
        let url = format!("{}/v1/devboxes/{d}/execute_sync", server.url);
        let key = server.key.clone();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"command": "sleep 600"}))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = server
        .post(&format!("/v1/devboxes/{d}/shutdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answered = tokio::time::timeout(Duration::from_secs(20), sync)
        .await
        .expect("execute_sync ends with the devbox");
    let status = answered.unwrap().unwrap().status();
    assert_eq!(
        status, 409,
        "the running execute_sync learns the devbox stopped"
    );
    assert!(!server.data.path().join("devboxes").join(&d).exists());
    let v = server.get_json(&format!("/v1/devboxes/{d}")).await;
    assert_eq!(v["status"], "shutdown");
    server.assert_healthy(&witness).await;
}
