//! Issue "Isolation": every sandbox sees and touches only what it was given. One test per
//! attack; each performs the attack for real and checks that it fails while a witness keeps
//! working. (Exhaustion and recursive calls have their own files: `isolation_limits.rs`,
//! `isolation_calls.rs`.)

mod common;

use common::{copy_dir, fixture, rss_kib, Db, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A value no sandbox may ever see: set in the server's environment only.
fn canary() -> String {
    format!("canary-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn wait_running(server: &Server, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let inv = server
            .get_json(&format!("/v1/functions/invocations/{id}"))
            .await;
        if inv["status"] == "running" {
            return;
        }
        assert!(Instant::now() < deadline, "never started: {inv}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Item 1: a devbox cannot redirect the server's exec and file calls to another devbox, to
/// a warm-pool sandbox or to a host socket: the agent is reached through a socket handed
/// over at start, and nothing in the devbox's file system leads to any agent.
#[tokio::test]
async fn devbox_cannot_redirect_the_server_to_another_agent() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let data = server.data.path().display().to_string();
    let a = server.create_devbox(json!({"name": "attacker"})).await;
    let b = server.create_devbox(json!({"name": "victim"})).await;
    server.exec(&a, "echo A > ~/who").await;
    server.exec(&b, "echo B > ~/who").await;

    // No socket anywhere in the devbox's own file system, no /run/openloop.
    let (_, out, _) = server
        .exec(&a, "find / -xdev -type s 2>/dev/null | wc -l")
        .await;
    assert_eq!(out.trim(), "0", "sockets inside the devbox");
    let (code, _, _) = server.exec(&a, "test -e /run/openloop").await;
    assert_ne!(code, 0, "/run/openloop exists inside the devbox");

    // The old attack: links to the other devbox's socket path, to a host process's root and to
    // a host socket, planted wherever the devbox may write.
    let attack = format!(
        "for d in ~ /tmp /dev/shm; do \
           ln -sf {data}/devboxes/{b}/run/agent.sock $d/agent.sock; \
           ln -sf /proc/{pid}/root/run/openloop/agent.sock $d/pool.sock; \
           ln -sf /run/systemd/private $d/host.sock; \
         done; mkdir -p /run/openloop 2>/dev/null; ls ~ /tmp",
        pid = server.pid()
    );
    server.exec(&a, &attack).await;
    let (_, out, _) = server.exec(&a, "cat ~/who").await;
    assert_eq!(out, "A\n", "exec in A ran elsewhere");
    let r = server
        .post(&format!("/v1/devboxes/{a}/read_file_contents"))
        .json(&json!({"file_path": "who"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "A\n",
        "read_file_contents of A read elsewhere"
    );
    let (_, out, _) = server.exec(&b, "cat ~/who").await;
    assert_eq!(out, "B\n", "devbox B was touched");

    // The mount table names no host path: not the data directory, the image cache or the
    // agent binary on the host.
    let (_, mounts, _) = server.exec(&a, "cat /proc/self/mountinfo").await;
    for host in [
        data.as_str(),
        "/var/cache/openloop",
        "openloop-devbox-agent",
        "/work",
    ] {
        assert!(
            !mounts.contains(host),
            "{host} in the mount table:\n{mounts}"
        );
    }

    // A process planted in a devbox does not survive into the next devbox handed out.
    server.exec(&a, "nohup sleep 4242 >/dev/null 2>&1 &").await;
    server.shutdown_devbox(&a).await;
    let c = server.create_devbox(json!({"name": "next"})).await;
    let (_, out, _) = server
        .exec(&c, "ps -eo args | grep -c '^sleep 4242' || true")
        .await;
    assert_eq!(
        out.trim(),
        "0",
        "the planted process reached the next devbox"
    );
    server.assert_healthy(&b).await;
}

/// Item 2 (and items 5 and 7 for function code): a run sees, signals, traces and reads no
/// other process: not a concurrent run of the same deployment, not its warm process. It
/// has no capabilities, a seccomp filter, no user namespaces, and a /tmp of its own that is
/// size-limited and gone when it ends.
#[tokio::test]
async fn runs_cannot_see_signal_trace_or_read_each_other() {
    let server = Server::start_with(Db::Sqlite, &[("OPENLOOP_RUN_TMP_MB", "16")])
        .await
        .unwrap();
    server.deploy_ok(&fixture("isolation_agent"));
    let victim = server
        .invoke_async("isolation_agent", "victim", json!({"seconds": 6}))
        .await;
    wait_running(&server, &victim).await;
    let data = server.data.path().display().to_string();
    let (status, inv) = server
        .invoke_sync(
            "isolation_agent",
            "attacker",
            json!({"data_dir": data, "tmp_fill_mb": 64}),
        )
        .await;
    assert_eq!(status, 200, "{inv}");
    assert_eq!(inv["status"], "success", "{inv}");
    let r = &inv["result"];
    assert_eq!(r["pid"], 1, "a run is pid 1 of its own pid namespace: {r}");
    assert_eq!(r["visible"], json!([1]), "other processes visible: {r}");
    assert_eq!(
        r["signalable"],
        json!([1]),
        "other processes signalable: {r}"
    );
    assert_eq!(r["readable"], json!([]), "{r}");
    assert_eq!(r["traced"], json!([]), "{r}");
    assert_eq!(r["dumpable"], 0, "{r}");
    assert_eq!(r["status"]["Seccomp"], "2", "{r}");
    assert_eq!(r["status"]["NoNewPrivs"], "1", "{r}");
    assert_eq!(r["status"]["CapEff"], "0000000000000000", "{r}");
    assert_eq!(r["status"]["CapBnd"], "0000000000000000", "{r}");
    assert_eq!(
        r["userns_errno"], r["eperm"],
        "a user namespace was created: {r}"
    );
    assert_eq!(r["host_path_in_mounts"], false, "{r}");
    assert_eq!(
        r["tmp_before"],
        json!([]),
        "another run's /tmp is visible: {r}"
    );
    assert!(r["tmp_written_mb"].as_u64().unwrap() <= 16, "{r}");
    assert_eq!(
        r["tmp_fill_errno"], 28,
        "/tmp is not size-limited (ENOSPC): {r}"
    );

    // The victim was neither killed nor made to end early with a forged result.
    let v = server
        .wait_invocation(&victim, Duration::from_secs(60))
        .await;
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["result"], "victim finished", "{v}");
    let after = v["ended_at_ms"].as_i64().unwrap() - v["started_at_ms"].as_i64().unwrap();
    assert!(after >= 5_500, "the victim ended early: {v}");
}

/// Each run's process, whether forked straight into its namespaces (a single-threaded warm
/// process) or by fork, unshare and fork again (a warm process with a thread of its own): pid 1
/// of namespaces of its own, alone there, sealed, and with a random state of its own.
#[tokio::test]
async fn runs_are_isolated_alike_however_they_are_forked() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (project, threaded) in [("forks_plain", false), ("forks_threaded", true)] {
        let dir = tmp.path().join(project);
        copy_dir(&fixture("forks_agent"), &dir);
        if threaded {
            std::fs::write(dir.join("agent/THREADED"), "").unwrap();
        }
        server.deploy_ok(&dir);
        let mut seen: Vec<Value> = Vec::new();
        for _ in 0..3 {
            let (_, inv) = server.invoke_sync(project, "sample", json!({})).await;
            assert_eq!(inv["status"], "success", "{project}: {inv}");
            let r = inv["result"].clone();
            assert_eq!(r["pid"], 1, "{project}: {r}");
            assert_eq!(r["visible"], json!([1]), "{project}: {r}");
            assert_eq!(r["status"]["Seccomp"], "2", "{project}: {r}");
            assert_eq!(r["status"]["NoNewPrivs"], "1", "{project}: {r}");
            assert_eq!(r["status"]["CapEff"], "0000000000000000", "{project}: {r}");
            for earlier in &seen {
                for key in ["random", "user_ns", "pid_ns"] {
                    assert_ne!(earlier[key], r[key], "{project}: two runs share {key}");
                }
            }
            seen.push(r);
        }
    }
}

/// Item 3: no sandboxed process (run, warm process, devbox and its first process) sees the
/// server's environment; each starts from a documented list.
#[tokio::test]
async fn no_sandbox_sees_the_server_environment() {
    let secret = canary();
    let server = Server::start_with(Db::Sqlite, &[("OPENLOOP_TEST_CANARY", secret.as_str())])
        .await
        .unwrap();
    server.deploy_ok(&fixture("isolation_agent"));
    let (_, inv) = server
        .invoke_sync("isolation_agent", "environment", json!({}))
        .await;
    assert_eq!(inv["status"], "success", "{inv}");
    let text = inv["result"].to_string();
    assert!(!text.contains(&secret), "the canary reached a run: {text}");
    let allowed = [
        "PATH",
        "HOME",
        "LANG",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "OPENLOOP_API_URL",
        "OPENLOOP_TOKEN",
        "OPENLOOP_INVOCATION_ID",
    ];
    for key in inv["result"]["environ"].as_object().unwrap().keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "undocumented variable {key} in a run"
        );
    }

    let d = server.create_devbox(json!({})).await;
    let (_, out, _) = server
        .exec(
            &d,
            "cat /proc/1/environ | tr '\\0' '\\n'; echo ---; env; echo ---; \
             cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'",
        )
        .await;
    assert!(!out.contains(&secret), "the canary reached a devbox: {out}");
    assert!(
        out.starts_with("---\n"),
        "the sandbox's first process has an environment: {out}"
    );
}

/// Item 4: a package's build hook runs in the build's sandbox: it cannot read the admin key
/// or write anywhere on the host, sees no server environment, runs unprivileged under seccomp.
#[tokio::test]
async fn build_hooks_run_sandboxed() {
    let secret = canary();
    let server = Server::start_with(Db::Sqlite, &[("OPENLOOP_TEST_CANARY", secret.as_str())])
        .await
        .unwrap();
    let data = server.data.path().display().to_string();
    let tag = rand_suffix();
    let host_targets = [
        format!("{data}/pwned"),
        format!("/root/openloop-pwned-{tag}"),
        format!("/tmp/openloop-pwned-{tag}"),
        format!("{}/pwned-{tag}", common::repo_root().display()),
    ];
    let project = tempfile::tempdir().unwrap();
    let root = project.path().join("hooked");
    std::fs::create_dir_all(root.join("agent")).unwrap();
    std::fs::create_dir_all(root.join("evilpkg")).unwrap();
    std::fs::write(
        root.join("runloop.toml"),
        "[module]\npath = \"./agent\"\nname = \"fns\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("agent/fns.py"),
        "import runloop\n\n@runloop.function\ndef hi() -> str:\n    return 'hi'\n",
    )
    .unwrap();
    std::fs::write(root.join("requirements.txt"), "./evilpkg\n").unwrap();
    std::fs::write(
        root.join("evilpkg/pyproject.toml"),
        "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n",
    )
    .unwrap();
    let setup = format!(
        r#"import json, os, sys
report = {{"uid": os.getuid()}}
try:
    report["admin_key"] = open({key:?}).read()
except Exception as e:
    report["admin_key"] = type(e).__name__
written = []
for target in {targets:?}:
    try:
        with open(target, "w") as f:
            f.write("pwned")
        written.append(target)
    except Exception:
        pass
report["written"] = written
report["canary"] = any({secret:?} in v for v in os.environ.values())
report["env"] = sorted(os.environ)
with open("/proc/self/status") as f:
    report["seccomp"] = [l.split()[1] for l in f if l.startswith("Seccomp:")][0]
report["userns"] = os.system("unshare -Ur true 2>/dev/null") == 0
sys.exit("BUILD-HOOK-REPORT " + json.dumps(report))
"#,
        key = format!("{data}/admin-key"),
        targets = host_targets,
    );
    std::fs::write(root.join("evilpkg/setup.py"), setup).unwrap();

    let (ok, out, err) = server.deploy_cli(&root, &[]);
    assert!(!ok, "the hook fails the build on purpose");
    let log = format!("{out}\n{err}");
    assert!(
        !log.contains(&secret),
        "the canary reached the build: {log}"
    );
    let start = log
        .find("BUILD-HOOK-REPORT ")
        .unwrap_or_else(|| panic!("the build hook did not run: {log}"));
    let line = log[start + "BUILD-HOOK-REPORT ".len()..]
        .lines()
        .next()
        .unwrap();
    let report: Value = serde_json::from_str(line).unwrap();
    assert_eq!(report["uid"], 1000, "{report}");
    assert_eq!(report["admin_key"], "FileNotFoundError", "{report}");
    assert_eq!(report["canary"], false, "{report}");
    assert_eq!(report["seccomp"], "2", "{report}");
    assert_eq!(report["userns"], false, "{report}");
    for target in &host_targets {
        assert!(
            !std::path::Path::new(target).exists(),
            "the build hook wrote {target} on the host ({report})"
        );
    }
    // The server still builds and runs good deployments.
    server.deploy_ok(&fixture("isolation_agent"));
    let (_, inv) = server
        .invoke_sync("isolation_agent", "victim", json!({"seconds": 0}))
        .await;
    assert_eq!(inv["status"], "success", "{inv}");
}

/// Item 5 for devboxes: a seccomp filter, no user namespaces (so no root inside one).
#[tokio::test]
async fn devboxes_run_under_seccomp_without_user_namespaces() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let d = server.create_devbox(json!({})).await;
    let (_, out, _) = server
        .exec(
            &d,
            "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status",
        )
        .await;
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    for cmd in [
        "unshare -Ur true",
        "unshare -U true",
        "unshare -r id -u",
        "unshare --user --map-root-user --mount true",
    ] {
        let (code, out, err) = server.exec(&d, cmd).await;
        assert_ne!(code, 0, "{cmd} succeeded: {out} {err}");
    }
    // Ordinary work still works: processes, threads, pipes, files.
    let (code, out, _) = server
        .exec(
            &d,
            "seq 1 3 | sort -r | tr '\\n' ' ' && (sleep 0.1 &) && echo ok",
        )
        .await;
    assert_eq!((code, out.as_str()), (0, "3 2 1 ok\n"));
}

/// Item 6: a deployment's warm process (its import and its request validators) runs in a
/// memory-limited cgroup of its own, not the server's.
#[tokio::test]
async fn warm_process_is_memory_limited() {
    // The warm cgroup's limit is --warm-memory-mb plus 4 MiB per concurrent run (what each
    // run's process leaves charged there while it is forked): 200 + 4 × (8 + 16) = 296 MiB.
    let server = Server::start_with(
        Db::Sqlite,
        &[
            ("OPENLOOP_WARM_MEMORY_MB", "200"),
            ("OPENLOOP_MAX_CONCURRENT_RUNS", "8"),
        ],
    )
    .await
    .unwrap();
    server.deploy_ok(&fixture("isolation_agent"));
    let rss_before = rss_kib(server.pid());
    // The validator allocates 600 MiB inside the warm process (limit 296 MiB).
    let (status, inv) = server
        .invoke_sync(
            "isolation_agent",
            "validated",
            json!({"item": {"megabytes": 600}}),
        )
        .await;
    assert_ne!(status, 200, "600 MiB in a 200 MiB warm process: {inv}");
    let message = inv["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("memory"), "{inv}");
    // The server did not pay for it, and the next request gets a new warm process.
    let rss_after = rss_kib(server.pid());
    assert!(
        rss_after < rss_before + 100 * 1024,
        "server RSS grew from {rss_before} to {rss_after} KiB"
    );
    let (status, inv) = server
        .invoke_sync(
            "isolation_agent",
            "validated",
            json!({"item": {"megabytes": 1}}),
        )
        .await;
    assert_eq!((status, &inv["result"]), (200, &json!(1)), "{inv}");
}

/// Item 7 for devboxes: everything a devbox can write is its own size-limited disk or
/// memory counted in its cgroup (the tmpfs mounts: their pages are charged to the writer's
/// memory cgroup); nothing lands on the host's file systems.
#[tokio::test]
async fn devbox_writes_only_to_its_own_disk_or_memory() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let d = server.create_devbox(json!({})).await;
    let (_, out, _) = server
        .exec(
            &d,
            "awk '{print $5, $9}' /proc/self/mountinfo | while read m fs; do \
               [ -w \"$m\" ] && [ -d \"$m\" ] && echo \"$m $fs\"; done",
        )
        .await;
    for line in out.lines() {
        let (mount, fs) = line.split_once(' ').unwrap();
        let ok = matches!(
            (mount, fs),
            ("/", "overlay")
                | ("/dev", "tmpfs")
                | ("/dev/shm", "tmpfs")
                | ("/tmp", "tmpfs")
                | ("/dev/pts", "devpts")
        );
        assert!(ok, "writable mount {mount} ({fs}) in a devbox:\n{out}");
    }
    // The overlay's upper layer lives on the devbox's own disk: filling it stops at its size.
    let (_, df, _) = server.exec(&d, "df -B1M --output=size / | tail -1").await;
    let size_mb: u64 = df.trim().parse().unwrap_or(0);
    assert!(size_mb > 0 && size_mb < 64 * 1024, "root size {df}");
}
