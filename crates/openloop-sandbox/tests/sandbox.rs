//! Real sandboxes: needs root, bubblewrap and the base image (built on first use).

use openloop_sandbox::cgroup::Limits;
use openloop_sandbox::{image, Devbox, DevboxSpec, SandboxConfig};
use std::collections::BTreeMap;
use std::path::PathBuf;

async fn start(tmp: &tempfile::TempDir, id: &str) -> Devbox {
    start_with(tmp, id, false, 1 << 30).await
}

async fn start_with(tmp: &tempfile::TempDir, id: &str, network: bool, disk_bytes: u64) -> Devbox {
    let image_dir =
        std::env::var("OPENLOOP_IMAGE_DIR").unwrap_or_else(|_| "/var/cache/openloop/images".into());
    let mirror = std::env::var("OPENLOOP_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let image = image::ensure_base_image(&PathBuf::from(image_dir), &mirror)
        .await
        .unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let agent_layer = tmp.path().join("agent-layer");
    openloop_sandbox::devbox::prepare_agent_layer(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/openloop-devbox-agent"),
        &agent_layer,
    )
    .unwrap();
    let config = SandboxConfig {
        devbox_dir: tmp.path().join("devboxes"),
        image,
        agent_layer,
        pool: None,
    };
    let spec = DevboxSpec {
        id: id.into(),
        env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
        limits: Limits {
            memory_bytes: 256 << 20,
            pids: 64,
            cpu_shares: 1024,
        },
        disk_bytes,
        network,
        egress: None,
        lower: None,
        root: false,
        sudo: false,
    };
    Devbox::start(&config, spec).await.expect("devbox starts")
}

async fn sh(d: &Devbox, cmd: &str) -> (i32, String, String) {
    let out = d
        .exec(cmd, BTreeMap::new(), None, 1 << 20, None)
        .await
        .unwrap();
    (
        out.exit.shell_code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn exec_files_and_isolation() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(&tmp, "sbxtest1").await;
    let (code, out, _) = sh(&d, "echo $GREETING; id -u; pwd").await;
    assert_eq!(code, 0);
    assert_eq!(out, "hi\n1000\n/home/user\n");
    assert_eq!(sh(&d, "exit 7").await.0, 7);
    // The devboxes' locale comes from an archive (one file mapped per process that sets it).
    let (code, out, err) = sh(
        &d,
        "localedef --list-archive; python3 -c 'import locale; print(locale.setlocale(locale.LC_ALL, \"\"))'",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "C.utf8\nC.UTF-8\n"), "{err}");

    d.write_file("notes/a.txt", b"\x00\x01binary")
        .await
        .unwrap();
    assert_eq!(
        d.read_file("/home/user/notes/a.txt", 1 << 20)
            .await
            .unwrap(),
        b"\x00\x01binary"
    );
    d.delete_file("notes/a.txt").await.unwrap();
    assert!(d.read_file("notes/a.txt", 1 << 20).await.is_err());

    // The host's files, the test's data dir and the host's processes are invisible.
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "host-secret").unwrap();
    let (code, _, _) = sh(&d, &format!("cat {}", secret.display())).await;
    assert_ne!(code, 0);
    let (_, out, _) = sh(&d, "ls /proc | grep -E '^[0-9]+$' | wc -l").await;
    assert!(
        out.trim().parse::<u32>().unwrap() < 10,
        "sees host processes: {out}"
    );
    let (code, _, _) = sh(&d, "echo x > /etc/owned").await;
    assert_ne!(
        code, 0,
        "the base image must not be writable by the devbox user"
    );
    let (_, out, _) = sh(&d, "grep CapEff /proc/self/status").await;
    assert!(out.contains("0000000000000000"), "{out}");
    let (code, _, _) = sh(&d, "curl -sS -m 2 http://127.0.0.1:1/ || exit 9").await;
    assert_eq!(code, 9);

    // Writes land in the devbox's own layer.
    sh(&d, "echo layer > ~/f").await;
    assert!(tmp
        .path()
        .join("devboxes/sbxtest1/disk/upper/home/user/f")
        .exists());

    d.shutdown().await;
    assert!(!tmp.path().join("devboxes/sbxtest1").exists());
    assert!(d
        .exec("true", BTreeMap::new(), None, 10, None)
        .await
        .is_err());
}

#[tokio::test]
async fn fork_bomb_and_memory_hog_are_contained() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(&tmp, "sbxtest2").await;
    let bomb = r#"python3 -c '
import os, signal, time
kids = []
for _ in range(500):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
print(len(kids))
for k in kids:
    os.kill(k, signal.SIGKILL)
'"#;
    let (code, out, err) = sh(&d, bomb).await;
    assert_eq!(code, 0, "{err}");
    let forked: u32 = out.trim().parse().unwrap();
    assert!(forked < 64, "pids limit not enforced: {forked} children");
    let (code, _, _) = sh(
        &d,
        "python3 -c 'b = bytearray(1024*1024*1024); print(len(b))'",
    )
    .await;
    assert_ne!(
        code, 0,
        "a 1 GiB allocation must fail under a 256 MiB limit"
    );
    assert!(d.oom_killed() || code == 1);
    assert_eq!(sh(&d, "echo alive").await.1, "alive\n");
    d.shutdown().await;
}

#[tokio::test]
async fn disk_limit_and_outbound_network() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start_with(&tmp, "sbxtest3", true, 64 << 20).await;
    let (code, _, err) = sh(&d, "dd if=/dev/zero of=big bs=1M count=200").await;
    assert_ne!(code, 0);
    assert!(err.contains("No space left on device"), "{err}");
    let (code, _, _) = sh(&d, "rm big && echo ok > small").await;
    assert_eq!(code, 0, "space is freed again");
    // Outbound: the network namespace has a route out, but the host's loopback is refused.
    let (_, out, _) = sh(&d, "cat /proc/net/dev").await;
    assert!(out.contains("tap0"), "{out}");
    let (code, _, _) = sh(&d, "curl -sS -m 3 http://10.0.2.2:22/ ; exit $?").await;
    assert_ne!(
        code, 0,
        "the host's loopback must not be reachable through slirp"
    );
    d.shutdown().await;
    assert!(!tmp.path().join("devboxes/sbxtest3").exists());
}

/// A command ends when the server drops its connection: one still writing to its pipes, and
/// one that closed them (which the agent then watches with its exit, not its output).
#[tokio::test]
async fn a_dropped_connection_kills_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(&tmp, "sbxtest4").await;
    for (marker, cmd) in [
        ("11", "sleep 11"),
        ("12", "exec >/dev/null 2>&1 </dev/null; sleep 12"),
    ] {
        let run = d.exec(cmd, BTreeMap::new(), None, 1 << 20, None);
        let dropped = tokio::time::timeout(std::time::Duration::from_millis(700), run).await;
        assert!(dropped.is_err(), "{cmd} finished early");
        let mut left = String::new();
        for _ in 0..40 {
            left = sh(&d, "pgrep -a sleep || true").await.1;
            if !left.contains(&format!("sleep {marker}")) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            !left.contains(&format!("sleep {marker}")),
            "{cmd} outlived its connection: {left}"
        );
    }
    d.shutdown().await;
}
