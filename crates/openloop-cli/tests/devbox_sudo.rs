//! `sudo` for the devbox user (`serve --devbox-sudo`): root of the devbox's own user
//! namespace, confined by the devbox's sandbox; the user's own commands and the server's
//! file requests stay the user's. Without the flag `sudo` fails (as `devbox_attacks.rs`
//! checks too).

mod common;

use common::{Db, Server};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn sudo_is_root_of_the_devbox_only() {
    let server = Server::start_with(Db::Sqlite, &[("OPENLOOP_DEVBOX_SUDO", "true")])
        .await
        .unwrap();
    // From the warm pool (the default shape) and started on demand (another shape).
    let pooled = server.create_devbox(json!({})).await;
    let own = server
        .create_devbox(json!({"launch_parameters": {"custom_cpu_cores": 2}}))
        .await;
    for d in [&pooled, &own] {
        let (code, out, err) = server
            .exec(
                d,
                "id -u; sudo id -u; sudo -u user id -u; sudo printenv HOME USER SUDO_USER; \
                 cd /tmp && sudo pwd; echo through | sudo tee /etc/made-by-sudo >/dev/null; \
                 cat /etc/made-by-sudo; stat -c %U /etc/made-by-sudo; sudo -s 'exit 3'; echo $?; \
                 sudo -n true && echo ok; sudo no-such-command; echo $?",
            )
            .await;
        assert_eq!(code, 0, "{out} {err}");
        assert_eq!(
            out, "1000\n0\n1000\n/root\nroot\nuser\n/tmp\nthrough\nroot\n3\nok\n1\n",
            "{err}"
        );
    }
    // The user's own writes, and the server's file requests, are the user's.
    let r = server
        .post(&format!("/v1/devboxes/{own}/write_file_contents"))
        .json(&json!({"file_path": "notes/a.txt", "contents": "x"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (_, out, _) = server
        .exec(
            &own,
            "stat -c %U notes notes/a.txt; touch mine; stat -c %U mine; \
             touch /etc/nope 2>/dev/null || echo refused",
        )
        .await;
    assert_eq!(out, "user\nuser\nuser\nrefused\n");

    // Root here is root of this devbox only: no mounts, namespaces, raw network, chroot,
    // host loopback, and only two ids mapped.
    for cmd in [
        "sudo mount -t tmpfs none /mnt",
        "sudo unshare -r true",
        "sudo unshare -m true",
        "sudo chroot / true",
        "sudo ip link set lo down",
        "sudo mknod /tmp/null c 1 3",
        &format!(
            "sudo timeout 5 bash -c 'echo > /dev/tcp/127.0.0.1/{}'",
            server.port
        ),
    ] {
        let (code, _, _) = server.exec(&own, cmd).await;
        assert_ne!(code, 0, "{cmd} succeeded");
    }
    let (_, out, _) = server
        .exec(
            &own,
            "sudo cat /proc/self/uid_map | wc -l; sudo grep CapEff /proc/self/status",
        )
        .await;
    assert!(out.starts_with("2\n"), "{out}");
    assert!(
        !out.contains("000001ffffffffff"),
        "full capabilities: {out}"
    );
    // What root wrote stays in this devbox.
    let (code, _, _) = server
        .exec(&pooled, "test -e /etc/made-by-sudo-elsewhere")
        .await;
    assert_ne!(code, 0);

    // A command run through sudo goes with its execution.
    let r = server
        .post(&format!("/v1/devboxes/{own}/execute_async"))
        .json(&json!({"command": "sudo sleep 321"}))
        .send()
        .await
        .unwrap();
    let exec: serde_json::Value = r.json().await.unwrap();
    let exec_id = exec["execution_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, out, _) = server.exec(&own, "pgrep -xc sleep").await;
    assert_eq!(out, "1\n");
    let r = server
        .post(&format!("/v1/devboxes/{own}/executions/{exec_id}/kill"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let mut left = String::new();
    for _ in 0..50 {
        left = server.exec(&own, "pgrep -xc sleep || true").await.1;
        if left == "0\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, "0\n", "the sudo'd command outlived its execution");

    // A snapshot of what root wrote holds host root's files, and survives a resume.
    let (_, out, _) = server.exec(&own, "sudo touch /usr/local/bin/rooted").await;
    assert_eq!(out, "");
    for (path, status) in [("suspend", "suspended"), ("resume", "running")] {
        let r = server
            .post(&format!("/v1/devboxes/{own}/{path}"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["status"], status, "{v}");
    }
    let (_, out, _) = server
        .exec(&own, "stat -c %U /usr/local/bin/rooted; sudo id -u")
        .await;
    assert_eq!(out, "root\n0\n");
    server.assert_healthy(&pooled).await;
}

#[tokio::test]
async fn without_the_flag_there_is_no_sudo() {
    let server = Server::start_with(Db::Sqlite, &[("OPENLOOP_DEVBOX_SUDO", "false")])
        .await
        .unwrap();
    let d = server.create_devbox(json!({})).await;
    let (code, _, err) = server.exec(&d, "sudo true").await;
    assert_ne!(code, 0);
    assert!(err.contains("not available"), "{err}");
    let (_, out, _) = server
        .exec(&d, "id -u; cat /proc/self/uid_map | wc -l")
        .await;
    assert_eq!(out, "1000\n1\n");
}
