//! The devbox API driven by Runloop's own Python client (`runloop_api_client` from PyPI, pinned
//! in `common::RUNLOOP_CLIENT_VERSION`).

mod common;

use common::{Db, Server};

#[tokio::test]
async fn runloop_python_client_works_unchanged() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    common::run_client_check(
        &server,
        "runloop_client_check.py",
        &[],
        "all devbox calls worked",
    )
    .await;
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

/// A devbox outlives the server thread that started it: bwrap runs with `--die-with-parent`,
/// whose signal follows the forking *thread*, and tokio retires an idle blocking-pool thread
/// after ten seconds. Devboxes started there were SIGKILLed ten seconds after they started.
#[tokio::test]
async fn devboxes_outlive_the_thread_that_started_them() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let id = server.create_devbox(serde_json::json!({})).await;
    let (code, out, _) = server.exec(&id, "echo up").await;
    assert_eq!((code, out.trim()), (0, "up"));
    // Past tokio's ten seconds of a blocking thread's idleness, with nothing else to do.
    tokio::time::sleep(std::time::Duration::from_secs(14)).await;
    let v = server.get_json(&format!("/v1/devboxes/{id}")).await;
    assert_eq!(v["status"], "running", "the devbox died on its own: {v}");
    let (code, out, _) = server.exec(&id, "echo still").await;
    assert_eq!((code, out.trim()), (0, "still"));
}

/// Numbers may be floats wherever a request has one (Runloop's client sends its long-poll
/// timeouts as `30.0`, or with a fraction); nonsense is a 400 that names the field.
#[tokio::test]
async fn numbers_may_be_floats_and_bad_ones_are_400s_naming_the_field() {
    use serde_json::json;
    use std::time::{Duration, Instant};

    let server = Server::start(Db::Sqlite).await.unwrap();
    let post = |path: String, body: serde_json::Value| {
        let req = server.post(&path).json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status, text)
        }
    };

    // Launch parameters: integral floats where only whole numbers make sense, fractions
    // where they do; echoed back as numbers.
    let r = server
        .post("/v1/devboxes")
        .json(&json!({"launch_parameters": {
            "keep_alive_time_seconds": 600.5,
            "custom_cpu_cores": 1.5,
            "custom_gb_memory": 1.0,
            "custom_disk_size": 2.0,
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["launch_parameters"]["custom_gb_memory"], 1, "{v}");
    assert_eq!(v["launch_parameters"]["custom_disk_size"], 2, "{v}");
    assert_eq!(v["launch_parameters"]["custom_cpu_cores"], 1.5, "{v}");
    assert_eq!(
        v["launch_parameters"]["keep_alive_time_seconds"], 600.5,
        "{v}"
    );
    let id = v["id"].as_str().unwrap().to_string();
    for (params, field) in [
        (
            json!({"custom_gb_memory": 2.5}),
            "launch_parameters.custom_gb_memory",
        ),
        (
            json!({"custom_disk_size": "big"}),
            "launch_parameters.custom_disk_size",
        ),
        (
            json!({"custom_cpu_cores": 99}),
            "launch_parameters.custom_cpu_cores",
        ),
        (
            json!({"keep_alive_time_seconds": -1}),
            "launch_parameters.keep_alive_time_seconds",
        ),
        (
            json!({"keep_alive_time_seconds": 1e300}),
            "launch_parameters.keep_alive_time_seconds",
        ),
    ] {
        let (status, text) = post(
            "/v1/devboxes".into(),
            json!({ "launch_parameters": params }),
        )
        .await;
        assert_eq!(status, 400, "{params}: {text}");
        assert!(text.contains(field), "{params}: {text}");
    }

    // wait_for_status: a timeout of 0.5 s is 500 ms.
    let wait = format!("/v1/devboxes/{id}/wait_for_status");
    let (status, text) = post(
        wait.clone(),
        json!({"statuses": ["running"], "timeout_seconds": 0.5}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let started = Instant::now();
    let (status, text) = post(
        wait.clone(),
        json!({"statuses": ["suspended"], "timeout_seconds": 0.5}),
    )
    .await;
    assert_eq!(status, 408, "{text}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "a 0.5 s wait took {took:?}"
    );
    for bad in [json!(-1), json!("abc"), json!(1e300), json!(true)] {
        let (status, text) = post(
            wait.clone(),
            json!({"statuses": ["running"], "timeout_seconds": bad}),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {text}");
        assert!(text.contains("timeout_seconds"), "{bad}: {text}");
    }

    // Executions: `execute`'s optimistic_timeout, the execution wait, last_n and offset.
    let (status, text) = post(
        format!("/v1/devboxes/{id}/execute?last_n=1.0"),
        json!({"command": "echo one; echo two", "optimistic_timeout": 20.5}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let ex: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(ex["status"], "completed", "{ex}");
    assert_eq!(ex["stdout"], "two\n", "{ex}");
    let (status, text) = post(
        format!("/v1/devboxes/{id}/execute"),
        json!({"command": "echo never", "optimistic_timeout": -0.5}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("optimistic_timeout"), "{text}");
    let (status, text) = post(
        format!("/v1/devboxes/{id}/execute_async"),
        json!({"command": "sleep 0.5; echo late"}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let ex: serde_json::Value = serde_json::from_str(&text).unwrap();
    let eid = ex["execution_id"].as_str().unwrap();
    let exec_wait = format!("/v1/devboxes/{id}/executions/{eid}/wait_for_status");
    let (status, text) = post(
        exec_wait.clone(),
        json!({"statuses": ["completed"], "timeout_seconds": 25.0}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("late"), "{text}");
    for (query, field) in [("last_n=2.5", "last_n"), ("last_n=abc", "last_n")] {
        let (status, text) = post(
            format!("{exec_wait}?{query}"),
            json!({"statuses": ["completed"], "timeout_seconds": 1}),
        )
        .await;
        assert_eq!(status, 400, "{query}: {text}");
        assert!(text.contains(field), "{query}: {text}");
    }
    let (status, text) = post(
        exec_wait,
        json!({"statuses": ["completed"], "timeout_seconds": "abc"}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("timeout_seconds"), "{text}");
    let r = server
        .get(&format!(
            "/v1/devboxes/{id}/executions/{eid}/stream_stdout_updates?offset=2.0"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("\"output\":\"te\\n\""), "{body}");
    let r = server
        .get(&format!(
            "/v1/devboxes/{id}/executions/{eid}/stream_stdout_updates?offset=-1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // List: `limit` a whole number, as a float too.
    let r = server.get("/v1/devboxes?limit=1.0").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page: serde_json::Value = r.json().await.unwrap();
    assert_eq!(page["devboxes"].as_array().unwrap().len(), 1, "{page}");
    for bad in ["limit=2.5", "limit=abc", "limit=-1"] {
        let r = server
            .get(&format!("/v1/devboxes?{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert!(r.text().await.unwrap().contains("limit"), "{bad}");
    }
    server.shutdown_devbox(&id).await;
}

/// The agent refuses a bad path as soon as it reads the request and closes; the body still
/// being sent then meets a broken pipe. The refusal is the answer (400), every time, never
/// a 500 "lost contact" (schemathesis found it).
#[tokio::test]
async fn a_refused_write_is_a_400_not_a_lost_agent() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let id = server.create_devbox(serde_json::json!({})).await;
    for _ in 0..30 {
        let r = server
            .post(&format!("/v1/devboxes/{id}/write_file_contents"))
            .json(&serde_json::json!({"file_path": "", "contents": "$\u{86}\u{1e}\u{8c}Z\u{c9}i"}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("file path"), "{body}");
    }
    // The devbox is unharmed.
    let r = server
        .post(&format!("/v1/devboxes/{id}/write_file_contents"))
        .json(&serde_json::json!({"file_path": "ok.txt", "contents": "fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.shutdown_devbox(&id).await;
}

/// A simple command runs without bash (`openloop-devbox-agent`'s `simple`), and nothing a
/// caller sees differs from bash running it: its environment (with the devbox's variables),
/// its exit status, bash's error for a missing program, and a script without `#!` (which
/// cannot be executed as it stands, so bash runs it).
#[tokio::test]
async fn simple_commands_run_as_bash_would_run_them() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    let id = server
        .create_devbox(serde_json::json!({"environment_variables": {"WHO": "me"}}))
        .await;
    let sorted = |s: &str| {
        let mut v: Vec<String> = s.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    let (code, direct, _) = server.exec(&id, "env").await;
    assert_eq!(code, 0);
    // `exec env` is bash's own (a builtin first), and bash leaves `_` out for it.
    let (_, by_bash, _) = server.exec(&id, "exec env").await;
    let mut expected = sorted(&by_bash);
    expected.push("_=/usr/bin/env".into());
    expected.sort();
    assert_eq!(sorted(&direct), expected);
    for line in ["WHO=me", "PWD=/home/user", "SHLVL=0", "HOME=/home/user"] {
        assert!(direct.lines().any(|l| l == line), "{line} in {direct}");
    }
    assert_eq!(server.exec(&id, "true").await.0, 0);
    assert_eq!(server.exec(&id, "false").await.0, 1);
    assert_eq!(
        server.exec(&id, "ls -d /home/user").await,
        (0, "/home/user\n".to_string(), String::new())
    );
    let (code, _, err) = server.exec(&id, "no-such-program-here -x").await;
    assert_eq!(code, 127);
    assert!(
        err.contains("no-such-program-here: command not found"),
        "{err}"
    );
    let (code, _, _) = server
        .exec(
            &id,
            "printf 'echo from a script\\nexit 3\\n' > s && chmod +x s",
        )
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        server.exec(&id, "./s").await,
        (3, "from a script\n".to_string(), String::new())
    );
    server.shutdown_devbox(&id).await;
}
