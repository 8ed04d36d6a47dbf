//! Issue "Network, secrets and the API contract": the network paths of function code.
//! Traffic goes only to loopback addresses inside namespaces the sandboxes make themselves.

mod common;

use common::{fixture, Db, Server};
use serde_json::json;

/// Function code has a network namespace of its own: nothing on the host's loopback (the
/// server's port, PostgreSQL) is reachable, and the SDK reaches the API through the Unix
/// socket bound into its sandbox.
#[tokio::test]
async fn function_code_has_no_path_to_the_host() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    server.deploy_ok(&fixture("isolation_agent"));
    let pg_port = std::env::var("OPENLOOP_TEST_POSTGRES_URL")
        .ok()
        .and_then(|u| u.rsplit_once(':').map(|(_, p)| p.to_string()))
        .and_then(|p| p.split('/').next()?.parse::<u16>().ok())
        .unwrap_or(5432);
    let (_, inv) = server
        .invoke_sync(
            "isolation_agent",
            "reach",
            json!({"ports": [server.port, pg_port]}),
        )
        .await;
    assert_eq!(inv["status"], "success", "{inv}");
    for (port, outcome) in inv["result"]["ports"].as_object().unwrap() {
        assert_eq!(
            outcome, "ConnectionRefusedError",
            "127.0.0.1:{port} from function code: {inv}"
        );
    }
    assert_eq!(inv["result"]["interfaces"], json!(["lo", "tap0"]), "{inv}");
    // The host's side of the same ports is up: the refusals above are the sandbox's.
    assert!(std::net::TcpStream::connect(("127.0.0.1", server.port)).is_ok());

    let (_, inv) = server
        .invoke_sync("isolation_agent", "uses_api", json!({}))
        .await;
    assert_eq!(inv["status"], "success", "{inv}");
    assert!(
        inv["result"].as_str().unwrap().contains("via-socket"),
        "{inv}"
    );
}

/// Run `ip ARGS…` and insist it works.
fn ip(args: &str) {
    let st = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("ip (iproute2) is needed for the egress tests");
    assert!(st.success(), "ip {args} failed");
}

/// A network of this test's own: the calling thread moves into a new network namespace (so
/// everything it and its children start, the server included, lives there), joined by a
/// veth pair to a second namespace of fake hosts: a "metadata" host (169.254.169.254), two
/// "LAN" hosts (10.77.0.2, 192.168.77.2) and a "public" host (203.0.113.7, a documentation
/// address), each serving HTTP on port 80. No packet can leave these two namespaces.
struct FakeNet {
    name: String,
    server: std::process::Child,
    dns: std::process::Child,
}

impl FakeNet {
    fn enter() -> FakeNet {
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "a network namespace for the test: {}",
            std::io::Error::last_os_error()
        );
        // Unique per test: tests of one process run at once, each in its own namespace.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let name = format!("olfake{tag}");
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        ip("link set lo up");
        ip(&format!("netns add {name}"));
        let (here, there) = (format!("olv{tag}"), format!("olp{tag}"));
        ip(&format!(
            "link add {here} type veth peer name {there} netns {name}"
        ));
        ip(&format!("addr add 10.77.0.1/24 dev {here}"));
        ip(&format!("link set {here} up"));
        for addr in [
            "10.77.0.2/24",
            "169.254.169.254/32",
            "192.168.77.2/32",
            "203.0.113.7/32",
        ] {
            ip(&format!("-n {name} addr add {addr} dev {there}"));
        }
        ip(&format!("-n {name} link set {there} up"));
        ip(&format!("-n {name} link set lo up"));
        for host in ["169.254.169.254", "192.168.77.2", "203.0.113.7"] {
            ip(&format!("route add {host}/32 via 10.77.0.2"));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "fake host\n").unwrap();
        let server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "/usr/bin/python3",
                "-m",
                "http.server",
                "80",
            ])
            .current_dir(dir.keep())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // A fake resolver for a few test names, on the "LAN" host.
        let dns = std::process::Command::new("ip")
            .args(["netns", "exec", &name, "/usr/bin/python3"])
            .arg(
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/clients/fake_dns.py"),
            )
            .arg("10.77.0.2")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Up when the fake hosts answer from this namespace.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect("203.0.113.7:80").is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the fake hosts did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        FakeNet { name, server, dns }
    }
}

impl FakeNet {
    /// A runtime for the test: its threads (and so every process it starts, the server
    /// included) inherit the calling thread's network namespace.
    fn runtime(&self) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    }
}

impl Drop for FakeNet {
    fn drop(&mut self) {
        for child in [&mut self.server, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The default egress rules: a devbox with outbound network reaches a public address, and
/// neither the link-local metadata address, nor private (LAN) addresses, nor the host's own
/// address, although each answers from the host's side.
#[test]
fn egress_defaults_keep_sandboxes_off_private_link_local_and_host_addresses() {
    let net = FakeNet::enter();
    net.runtime().block_on(async {
        let server = Server::start(Db::Sqlite).await.unwrap();
        for target in ["169.254.169.254:80", "192.168.77.2:80", "10.77.0.2:80", "203.0.113.7:80"] {
            assert!(
                std::net::TcpStream::connect(target).is_ok(),
                "{target} must answer from the host's side for this test to mean anything"
            );
        }
        let d = server.create_devbox(json!({"network": "outbound"})).await;
        let get = |host: &str| {
            format!(
                "timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/80; printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3; head -1 <&3' 2>&1"
            )
        };
        let (code, out, _) = server.exec(&d, &get("203.0.113.7")).await;
        assert_eq!(code, 0, "the public fake host is unreachable: {out}");
        assert!(out.starts_with("HTTP/1.0 200"), "{out}");
        for host in ["169.254.169.254", "192.168.77.2", "10.77.0.2", "10.77.0.1"] {
            let (code, out, _) = server.exec(&d, &get(host)).await;
            assert_ne!(code, 0, "{host} reachable from a devbox: {out}");
        }
        // The devbox cannot loosen its own rules (no CAP_NET_ADMIN in its namespace).
        let (code, _, _) = server
            .exec(&d, "ls /usr/sbin/nft /sbin/nft 2>/dev/null; exit 1")
            .await;
        assert_ne!(code, 0);
    });
    drop(net);
}

/// Function code's namespace carries the same rules (installed before its network exists).
#[tokio::test]
async fn function_sandboxes_carry_the_egress_rules() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    server.deploy_ok(&fixture("isolation_agent"));
    let (_, inv) = server
        .invoke_sync("isolation_agent", "reach", json!({"ports": []}))
        .await;
    assert_eq!(inv["status"], "success", "{inv}");
    let rules = warm_rules(server.pid()).await;
    for needle in [
        "169.254.0.0/16",
        "10.0.0.0/8",
        "192.168.0.0/16",
        "fe80::/10",
        "reject",
    ] {
        assert!(rules.contains(needle), "{needle} missing from:\n{rules}");
    }
}

/// Runloop's network-policies API, driven by Runloop's own client.
#[tokio::test]
async fn network_policies_work_with_runloops_client() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    common::run_client_check(
        &server,
        "runloop_network_policy_check.py",
        &[],
        "all network policy calls worked",
    )
    .await;
}

async fn create_policy(server: &Server, body: serde_json::Value) -> String {
    let r = server
        .post("/v1/network-policies")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(status.is_success(), "create policy: {status} {v}");
    v["id"].as_str().unwrap().to_string()
}

/// A network policy decides where a devbox's traffic goes: only its CIDRs at their ports, all
/// but the host with `allow_all`, nothing with an empty policy.
#[test]
fn network_policies_decide_where_devboxes_reach() {
    let net = FakeNet::enter();
    net.runtime().block_on(async {
        let server = Server::start(Db::Sqlite).await.unwrap();
        let lan_web = create_policy(
            &server,
            json!({"name": "lan-web", "allowed_cidrs": [
                {"cidr": "192.168.77.2/32", "ports": [{"port": 80, "protocol": "TCP"}]}]}),
        )
        .await;
        let all = create_policy(&server, json!({"name": "all", "allow_all": true})).await;
        let none = create_policy(&server, json!({"name": "none"})).await;
        let reach = |host: &str| {
            format!(
                "timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/80; printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3; head -1 <&3' 2>&1"
            )
        };
        let cases: [(&str, &[(&str, bool)]); 3] = [
            (
                &lan_web,
                &[
                    ("192.168.77.2", true),
                    ("203.0.113.7", false),
                    ("169.254.169.254", false),
                    ("10.77.0.2", false),
                ],
            ),
            (
                &all,
                &[
                    ("192.168.77.2", true),
                    ("203.0.113.7", true),
                    ("10.77.0.2", true),
                    // The host itself stays out of reach whatever the policy.
                    ("10.77.0.1", false),
                ],
            ),
            (&none, &[("203.0.113.7", false), ("192.168.77.2", false)]),
        ];
        for (policy, expect) in cases {
            let d = server
                .create_devbox(json!({"launch_parameters": {"network_policy_id": policy}}))
                .await;
            for (host, reachable) in expect {
                let (code, out, _) = server.exec(&d, &reach(host)).await;
                if *reachable {
                    assert!(
                        code == 0 && out.starts_with("HTTP/1.0 200"),
                        "policy {policy}: {host} unreachable: {out}"
                    );
                } else {
                    assert_ne!(code, 0, "policy {policy}: {host} reachable: {out}");
                }
            }
        }
        // An unknown policy is a clear error, not a devbox without rules.
        let r = server
            .post("/v1/devboxes")
            .json(&json!({"launch_parameters": {"network_policy_id": "np_missing"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.text().await.unwrap().contains("np_missing"));
    });
    drop(net);
}

/// A deployment's `runloop.toml` names the policy its function code runs under.
#[tokio::test]
async fn deployments_run_under_their_network_policy() {
    let server = Server::start(Db::Sqlite).await.unwrap();
    create_policy(
        &server,
        json!({"name": "fn-lan", "allowed_cidrs": [{"cidr": "192.168.77.0/24"}]}),
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("isolation_agent");
    common::copy_dir(&fixture("isolation_agent"), &project);
    let toml = std::fs::read_to_string(project.join("runloop.toml")).unwrap();
    std::fs::write(
        project.join("runloop.toml"),
        format!("{toml}\n[network]\npolicy = \"fn-lan\"\n"),
    )
    .unwrap();
    server.deploy_ok(&project);
    let rules = warm_rules(server.pid()).await;
    assert!(rules.contains("ip daddr 192.168.77.0/24 accept"), "{rules}");
    assert!(!rules.contains("169.254.0.0/16"), "{rules}");

    // A policy that does not exist fails the deploy, naming it.
    std::fs::write(
        project.join("runloop.toml"),
        format!("{toml}\n[network]\npolicy = \"no-such-policy\"\n"),
    )
    .unwrap();
    let (ok, out, err) = server.deploy_cli(&project, &[]);
    assert!(!ok);
    assert!(
        format!("{out}{err}").contains("no-such-policy"),
        "{out}{err}"
    );
}

/// The parent of a process, from `/proc/PID/stat`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The egress table in the network namespace of `server`'s warm process (a descendant of the
/// server in a network namespace of its own).
async fn warm_rules(server: u32) -> String {
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    let descends = |mut pid: u32| {
        while let Some(p) = parent(pid) {
            if p == server {
                return true;
            }
            if p <= 1 {
                return false;
            }
            pid = p;
        }
        false
    };
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            String::from_utf8_lossy(&cmdline).contains("runloop._host")
                && ns.as_ref() != Some(&own)
                && descends(*pid)
        })
        .expect("no warm process in a network namespace of its own");
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "nft",
            "list",
            "table",
            "inet",
            "openloop_egress",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A policy's allowed hostnames: they resolve (through Openloop's DNS filter, from the
/// resolver the server is given) and their addresses are reachable; no other name resolves,
/// and no other address opens.
#[test]
fn allowed_hostnames_resolve_and_nothing_else_does() {
    let net = FakeNet::enter();
    net.runtime().block_on(async {
        let server = Server::start_with(Db::Sqlite, &[("OPENLOOP_DNS_UPSTREAM", "10.77.0.2:53")])
            .await
            .unwrap();
        let policy = create_policy(
            &server,
            json!({"name": "names", "allowed_hostnames": ["web.lan.test", "*.wild.test"]}),
        )
        .await;
        let d = server
            .create_devbox(json!({"launch_parameters": {"network_policy_id": policy}}))
            .await;
        let get = |host: &str| {
            format!(
                "timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/80; printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3; head -1 <&3' 2>&1"
            )
        };
        for (name, address) in [("web.lan.test", "192.168.77.2"), ("x.wild.test", "203.0.113.7")] {
            let (code, out, _) = server
                .exec(&d, &format!("getent ahostsv4 {name} | head -1"))
                .await;
            assert!(code == 0 && out.starts_with(address), "{name}: {out}");
            let (code, out, _) = server.exec(&d, &get(name)).await;
            assert!(code == 0 && out.starts_with("HTTP/1.0 200"), "{name}: {out}");
        }
        // Names the policy does not allow do not resolve, though the resolver knows them.
        for name in ["other.test", "wild.test", "lan.test"] {
            let (code, out, _) = server
                .exec(&d, &format!("getent ahostsv4 {name}"))
                .await;
            assert_ne!(code, 0, "{name} resolved: {out}");
        }
        // Addresses no allowed name led to stay closed, the resolver's own included.
        for host in ["10.77.0.2", "169.254.169.254"] {
            let (code, out, _) = server.exec(&d, &get(host)).await;
            assert_ne!(code, 0, "{host} reachable: {out}");
        }
        let (code, out, _) = server
            .exec(&d, "timeout 5 bash -c 'echo > /dev/tcp/10.77.0.2/53' 2>&1")
            .await;
        assert_ne!(code, 0, "the resolver reachable directly: {out}");
    });
    drop(net);
}
