//! Cluster mode: three nodes on one PostgreSQL database, on this machine (their own ports and
//! data directories). Any node answers any call; queued runs go to whichever node has a free
//! slot; a node killed with SIGKILL is taken over within its lease and loses no invocation; a
//! devbox on one node is driven through another with Runloop's own client; a node that comes
//! back rejoins under a new epoch and takes work.

mod common;

use common::{fixture, run_client_check, Db, Server};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The lease the nodes are held to here (the default is 15 s).
const LEASE: &str = "3";

/// The environment of every node of one cluster: its own fresh secrets key (shared by its
/// nodes), a short lease, four slots, no warm devboxes.
fn node_env() -> Vec<(&'static str, String)> {
    let secrets_key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(rand_bytes())
    };
    vec![
        ("OPENLOOP_NODE_LEASE_SECONDS", LEASE.to_string()),
        ("OPENLOOP_MAX_CONCURRENT_RUNS", "4".to_string()),
        ("OPENLOOP_SECRETS_KEY", secrets_key),
        ("OPENLOOP_DEVBOX_WARM_POOL", "0".to_string()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn nodes(server: &Server) -> Value {
    server.get_json("/v1/nodes").await
}

fn node<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("node {id} not listed: {list}"))
}

async fn this_node(server: &Server) -> String {
    let list = nodes(server).await;
    list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["this_node"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn status_of(server: &Server, id: &str) -> Value {
    server
        .get_json(&format!("/v1/functions/invocations/{id}"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_work_and_survive_losing_one() {
    let env = node_env();
    let Some(a) = Server::start_with(Db::Postgres, &borrowed(&env)).await else {
        return;
    };
    let mut b = Server::join(&a, &borrowed(&env)).await;
    let c = Server::join(&a, &borrowed(&env)).await;
    let (id_a, id_b, id_c) = (
        this_node(&a).await,
        this_node(&b).await,
        this_node(&c).await,
    );
    let list = nodes(&c).await;
    assert_eq!(list["clustered"], true, "{list}");
    for id in [&id_a, &id_b, &id_c] {
        assert_eq!(node(&list, id)["status"], "active", "{list}");
    }
    let cli = std::process::Command::new(common::bin())
        .args(["nodes", "--server", &b.url, "--api-key", &b.key])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "openloop nodes: {table}");
    assert!(
        table.contains(&id_a) && table.contains(&id_c) && table.contains("(this node)"),
        "{table}"
    );

    // Deployed through A; invoked through every node (each builds it on its first run).
    a.deploy_ok(&fixture("test_agent"));
    for (s, who) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let (code, v) = s
            .invoke_sync("test_agent", "echo", json!({"text": who}))
            .await;
        assert_eq!((code, &v["result"]["text"]), (200, &json!(who)), "{v}");
    }

    // invoke_sync on a node with no free slot: the run is queued, a node with a free slot
    // takes it, and the waiting call on A wakes when that node finishes it.
    let blockers: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(
                a.invoke_async("test_agent", "sleepy", json!({"seconds": 6}))
                    .await,
            );
        }
        v
    };
    wait_until(Duration::from_secs(30), || async {
        let l = nodes(&a).await;
        node(&l, &id_a)["running_invocations"].as_i64() == Some(4)
    })
    .await;
    let started = Instant::now();
    let (code, v) = a
        .invoke_sync("test_agent", "echo", json!({"text": "elsewhere"}))
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "success", "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the run waited for A's slots ({:?}) instead of running on another node",
        started.elapsed()
    );
    for id in &blockers {
        let done = a.wait_invocation(id, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "success", "{done}");
    }

    // A cancel through one node stops the run on the node that runs it.
    let victim = b
        .invoke_async("test_agent", "sleepy", json!({"seconds": 60}))
        .await;
    wait_until(Duration::from_secs(30), || async {
        status_of(&b, &victim).await["status"] == "running"
    })
    .await;
    let r = a
        .post(&format!("/v1/functions/invocations/{victim}/cancel"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "cancel: {}", r.status());
    wait_until(Duration::from_secs(15), || async {
        let l = nodes(&b).await;
        node(&l, &id_b)["running_invocations"].as_i64() == Some(0)
    })
    .await;
    assert_eq!(status_of(&c, &victim).await["status"], "canceled");

    // 300 invocations spread over the three nodes: quick echoes, and sleepers (plain and
    // retryable). B is killed while runs are in flight on it.
    let servers = [&a, &b, &c];
    let mut submitted: Vec<(String, &'static str)> = Vec::new();
    for i in 0..300usize {
        let s = servers[i % 3];
        let (function, request) = match i % 6 {
            0 => ("sleepy", json!({"seconds": 3})),
            3 => ("sleepy_retryable", json!({"seconds": 2})),
            _ => ("echo", json!({"text": format!("n{i}")})),
        };
        submitted.push((
            s.invoke_async("test_agent", function, request).await,
            function,
        ));
    }
    wait_until(Duration::from_secs(60), || async {
        let l = nodes(&a).await;
        node(&l, &id_b)["running_invocations"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    let killed_at = Instant::now();
    b.kill9();

    // Within the lease (plus a heartbeat) B is lost and its runs are taken over.
    wait_until(Duration::from_secs(20), || async {
        node(&nodes(&a).await, &id_b)["status"] == "lost"
    })
    .await;
    let takeover = killed_at.elapsed();
    let list = nodes(&c).await;
    let lost = node(&list, &id_b);
    assert!(
        lost["taken_over_by"] == json!(id_a) || lost["taken_over_by"] == json!(id_c),
        "{list}"
    );
    eprintln!("node B taken over {takeover:?} after its kill");

    // Every invocation ends: success, or failure with a reason (NodeLost for a run of a
    // function that is not retryable and was running on B). None is lost, none is stuck.
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    for (id, function) in &submitted {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = a.wait_invocation(id, left).await;
        let outcome = match v["status"].as_str().unwrap() {
            "success" => "success".to_string(),
            "failure" => {
                let kind = v["error"]["type"].as_str().unwrap_or("").to_string();
                assert_eq!(kind, "NodeLost", "only a lost node fails a run here: {v}");
                assert_ne!(
                    *function, "sleepy_retryable",
                    "a retryable run is run again, not failed: {v}"
                );
                kind
            }
            other => panic!("invocation {id} ended {other}: {v}"),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    eprintln!("outcomes: {outcomes:?}");
    assert_eq!(outcomes.values().sum::<usize>(), 300);
    assert!(
        outcomes.get("NodeLost").copied().unwrap_or(0) >= 1,
        "B was running plain runs when it was killed: {outcomes:?}"
    );
    assert!(
        outcomes.get("success").copied().unwrap_or(0) >= 250,
        "{outcomes:?}"
    );

    // A devbox created on C, driven through A with Runloop's own client.
    let devbox = c.create_devbox(json!({"name": "on-c"})).await;
    let l = nodes(&a).await;
    assert_eq!(node(&l, &id_c)["live_devboxes"], 1, "{l}");
    run_client_check(
        &a,
        "runloop_cluster_check.py",
        &[("DEVBOX_ID", devbox.as_str())],
        "CLUSTER DEVBOX OK",
    )
    .await;

    // B comes back under a new epoch and takes work again.
    let epoch_before = node(&nodes(&a).await, &id_b)["epoch"].as_i64().unwrap();
    b.spawn().await;
    let list = nodes(&b).await;
    let back = node(&list, &id_b);
    assert_eq!(back["status"], "active", "{list}");
    assert!(back["epoch"].as_i64().unwrap() > epoch_before, "{list}");
    let (code, v) = b
        .invoke_sync("test_agent", "echo", json!({"text": "back"}))
        .await;
    assert_eq!((code, &v["result"]["text"]), (200, &json!("back")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_devbox_on_a_lost_node_is_never_reported_running() {
    let env = node_env();
    let Some(a) = Server::start_with(Db::Postgres, &borrowed(&env)).await else {
        return;
    };
    let mut b = Server::join(&a, &borrowed(&env)).await;
    // A blueprint built on B: its record is shared, its layer stays on B, so a devbox from it
    // is refused through A with a 409 that says so (not a failed mount).
    let bp = b
        .post("/v1/blueprints")
        .json(&json!({"name": "on-b", "system_setup_commands": ["true"]}))
        .send()
        .await
        .unwrap();
    assert!(
        bp.status().is_success(),
        "create blueprint: {}",
        bp.status()
    );
    let bp: Value = bp.json().await.unwrap();
    let bp_id = bp["id"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(120), || async {
        a.get_json(&format!("/v1/blueprints/{bp_id}")).await["status"] == "build_complete"
    })
    .await;
    let r = a
        .post("/v1/devboxes")
        .json(&json!({"blueprint_id": bp_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let text = r.text().await.unwrap();
    assert!(text.contains("not on this node"), "{text}");
    let devbox = b.create_devbox(json!({"name": "on-b"})).await;
    let v = a.get_json(&format!("/v1/devboxes/{devbox}")).await;
    assert_eq!(v["status"], "running", "{v}");

    // Its tunnel, enabled and served through A: the request is relayed to B.
    let t: Value = a
        .post(&format!("/v1/devboxes/{devbox}/enable_tunnel"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tunnel_key = t["tunnel_key"]
        .as_str()
        .unwrap_or_else(|| panic!("{t}"))
        .to_string();
    let r = a
        .post(&format!("/v1/devboxes/{devbox}/execute_async"))
        .json(&json!({"command": "mkdir -p /home/user/s && cd /home/user/s && echo relayed > index.html && python3 -m http.server 8080 --bind 127.0.0.1"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "execute_async: {}", r.status());
    let tunnel_host = format!("8080-{tunnel_key}.tunnel.localhost:{}", a.port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = a
            .http
            .get(format!("http://127.0.0.1:{}/index.html", a.port))
            .header("Host", &tunnel_host)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let last = format!("{status} {}", r.text().await.unwrap());
        if status == 200 {
            assert_eq!(last, "200 OK relayed\n");
            break;
        }
        assert_eq!(status, 502, "{last}");
        assert!(
            Instant::now() < deadline,
            "the tunnel through A never answered: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.kill9();
    wait_until(Duration::from_secs(20), || async {
        a.get_json(&format!("/v1/devboxes/{devbox}")).await["status"] == "failure"
    })
    .await;
    // Calls about it answer from the record, not from a node that is gone.
    let r = a
        .post(&format!("/v1/devboxes/{devbox}/execute_sync"))
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_client_error(),
        "exec on a lost devbox: {}",
        r.status()
    );
}

fn rand_bytes() -> [u8; 32] {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

async fn wait_until<F, Fut>(within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_function_limit_holds_over_all_nodes() {
    let mut env = node_env();
    env.push(("OPENLOOP_MAX_CONCURRENT_RUNS_PER_FUNCTION", "1".to_string()));
    let Some(a) = Server::start_with(Db::Postgres, &borrowed(&env)).await else {
        return;
    };
    let b = Server::join(&a, &borrowed(&env)).await;
    a.deploy_ok(&fixture("test_agent"));
    a.deploy_ok(&fixture("calls_agent"));
    let (code, v) = b
        .invoke_sync("test_agent", "echo", json!({"text": "b"}))
        .await;
    assert_eq!(code, 200, "{v}");

    // Six sleepers, half through each node: at most one runs at any moment, on either node.
    let mut ids = Vec::new();
    for i in 0..6 {
        let s = if i % 2 == 0 { &a } else { &b };
        ids.push(
            s.invoke_async("test_agent", "sleepy", json!({"seconds": 0.6}))
                .await,
        );
    }
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let running = a
            .get_json("/v1/functions/invocations?project=test_agent&function=sleepy&status=running")
            .await["invocations"]
            .as_array()
            .unwrap()
            .len();
        assert!(
            running <= 1,
            "{running} runs of a function limited to 1 at once"
        );
        most = most.max(running);
        let mut done = 0;
        for id in &ids {
            let v = status_of(&a, id).await;
            match v["status"].as_str().unwrap() {
                "success" => done += 1,
                "failure" | "canceled" => panic!("{v}"),
                _ => {}
            }
        }
        if done == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the sleepers did not all run");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(most, 1, "a sleeper was seen running");

    // A run waiting on a call to its own function lends its slot, on whichever node the
    // call runs: three levels of recursion finish under a limit of one.
    let (code, v) = b
        .invoke_sync("calls_agent", "recurse", json!({"depth": 3}))
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["result"], 3, "{v}");
}
