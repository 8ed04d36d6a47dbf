//! Outbound network for a sandbox's own network namespace, and where it may go.
//!
//! slirp4netns gives the namespace a user-mode NAT to the outside (`tap0`, 10.0.2.100, the
//! gateway 10.0.2.2 and the resolver 10.0.2.3), with the host's loopback refused. An
//! nftables table inside the same namespace, installed by the server (root) and out of the
//! sandbox's reach (it has no `CAP_NET_ADMIN` there), rejects every packet to a private,
//! shared, link-local, loopback, multicast or reserved range and to every address of the
//! host itself, so nothing in a sandbox reaches the cloud metadata address, the LAN, or a
//! service on the host. DNS goes only to slirp's resolver.
//!
//! Both run from blocking code (the jail launcher, or a blocking task of the server).

use serde::{Deserialize, Serialize};
use std::io::{Error, Result, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};

/// Ranges no sandbox reaches by default (IPv4).
pub const DENIED_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Ranges no sandbox reaches by default (IPv6).
pub const DENIED_V6: &[&str] = &[
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// slirp4netns's resolver inside the namespace: the one private address a sandbox may use.
pub const RESOLVER: &str = "10.0.2.3";

/// Where a sandbox's traffic may go (Runloop's network policy, as the sandbox applies it).
///
/// Without a policy a sandbox reaches the public internet and nothing private (see the module
/// documentation). With one: `allow_all` lifts the private-range rule (loopback and the
/// host's own addresses stay refused: a sandbox never reaches its host); otherwise only the
/// `allowed_cidrs` are reachable, at their ports, and the addresses that allowed hostnames
/// resolve to ([`crate::dns`]), and nothing else (an empty policy denies all, DNS included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressPolicy {
    pub allow_all: bool,
    pub allowed_cidrs: Vec<CidrRule>,
    /// `example.com` or `*.example.com`.
    #[serde(default)]
    pub allowed_hostnames: Vec<String>,
    /// Where allowed hostnames are resolved (the host's resolver, reached from the host).
    #[serde(default)]
    pub resolver: Option<std::net::SocketAddr>,
}

impl EgressPolicy {
    /// Whether this policy needs the DNS filter.
    pub fn filters_names(&self) -> bool {
        !self.allow_all && !self.allowed_hostnames.is_empty()
    }
}

/// An IPv4 network a policy allows, at some ports (all when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidrRule {
    /// Canonical `a.b.c.d/n` (host bits zero).
    pub cidr: String,
    pub ports: Vec<PortRule>,
}

/// A port or an inclusive port range, for TCP, UDP or both (`protocol: None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRule {
    pub port: u16,
    pub end_port: Option<u16>,
    pub protocol: Option<Protocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Check an IPv4 CIDR: `a.b.c.d/n`, `n` at most 32, host bits zero. The error says why.
pub fn check_cidr(cidr: &str) -> std::result::Result<(), String> {
    let (addr, len) = cidr
        .split_once('/')
        .ok_or_else(|| format!("'{cidr}' is not a CIDR block like '10.12.0.0/16'"))?;
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("'{cidr}': '{addr}' is not an IPv4 address"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("'{cidr}': the prefix length must be 0 to 32"))?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if u32::from(addr) & !mask != 0 {
        return Err(format!(
            "'{cidr}' has host bits set; write it in canonical form ({}/{len})",
            std::net::Ipv4Addr::from(u32::from(addr) & mask)
        ));
    }
    Ok(())
}

/// A namespace's outbound network; it ends when this is dropped (slirp4netns sees its exit
/// descriptor close) or when the namespace's last process is gone.
pub struct Attached {
    slirp: Child,
    _exit: OwnedFd,
    _names: Option<crate::dns::DnsFilter>,
}

/// The DNS filter for `policy` in the namespace of `pid`, when the policy allows hostnames.
pub fn name_filter(
    pid: i32,
    policy: Option<&EgressPolicy>,
) -> Result<Option<crate::dns::DnsFilter>> {
    let Some(p) = policy.filter(|p| p.filters_names()) else {
        return Ok(None);
    };
    let resolver = p
        .resolver
        .or_else(crate::dns::host_resolver)
        .ok_or_else(|| Error::other("no resolver for allowed hostnames (set --dns-upstream)"))?;
    crate::dns::start(
        pid,
        crate::dns::HostnameFilter::new(&p.allowed_hostnames),
        resolver,
    )
    .map(Some)
}

/// Let the namespace of `pid` reach `addresses` (names an allowed hostname resolved to).
pub fn allow_addresses(pid: i32, addresses: &[std::net::Ipv4Addr]) -> Result<()> {
    let list: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    nft_in(
        pid,
        &format!(
            "add element inet openloop_egress allowed_hosts_v4 {{ {} }}\n",
            list.join(", ")
        ),
    )
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.slirp.kill();
        let _ = self.slirp.wait();
    }
}

/// A system tool by its full path (the jail launcher runs with an empty environment, so
/// there is no `PATH` to search; `nft` lives in an `sbin`).
fn tool(name: &str) -> std::path::PathBuf {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| std::path::Path::new(d).join(name))
    .find(|p| p.is_file())
    .unwrap_or_else(|| name.into())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// slirp4netns for the network namespace of `pid`, owned by the user namespace at `userns`:
/// user-mode NAT with the host's loopback refused, in its own sandbox and seccomp filter,
/// reporting readiness on descriptor 3 (which the caller provides).
pub fn slirp_command(pid: i32, userns: &str) -> Command {
    let mut cmd = Command::new(tool("slirp4netns"));
    cmd.args([
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-sandbox",
        "--enable-seccomp",
        "--ready-fd=3",
    ])
    .arg(format!("--userns-path={userns}"))
    .arg(pid.to_string())
    .arg("tap0")
    .env_clear()
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    cmd
}

/// Give the network namespace of `pid` (whose own user namespace owns it) outbound access
/// under `policy` (the default rules when `None`). Returns once the namespace is configured
/// and filtered.
pub fn attach(pid: i32, policy: Option<&EgressPolicy>) -> Result<Attached> {
    apply_rules(pid, policy)?;
    let names = name_filter(pid, policy)?;
    let (ready_r, ready_w) = pipe()?;
    let (exit_r, exit_w) = pipe()?;
    let (ready_fd, exit_fd) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
    let mut cmd = slirp_command(pid, &format!("/proc/{pid}/ns/user"));
    cmd.arg("--exit-fd=4");
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in [(ready_fd, 3), (exit_fd, 4)] {
                if libc::dup2(from, to) < 0 {
                    return Err(Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut slirp = cmd.spawn().map_err(|e| {
        Error::new(
            e.kind(),
            format!(
                "could not run slirp4netns ({e}); install it with `apt-get install slirp4netns`"
            ),
        )
    })?;
    drop(ready_w);
    drop(exit_r);
    let mut byte = [0u8; 1];
    let ready = std::fs::File::from(ready_r);
    if !matches!(std::io::Read::read(&mut &ready, &mut byte), Ok(1)) {
        let _ = slirp.kill();
        let mut err = String::new();
        if let Some(mut e) = slirp.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let _ = slirp.wait();
        return Err(Error::other(format!(
            "slirp4netns did not come up: {}",
            err.trim()
        )));
    }
    Ok(Attached {
        slirp,
        _exit: exit_w,
        _names: names,
    })
}

/// Install the egress rules of `policy` (the default rules when `None`) in the network
/// namespace of `pid` (`nft -f -` run inside it).
pub fn apply_rules(pid: i32, policy: Option<&EgressPolicy>) -> Result<()> {
    let host = host_addresses();
    let rules = match policy {
        None => default_rules(&host),
        Some(p) => policy_rules(p, &host),
    };
    nft_in(pid, &rules)
}

/// Run `nft -f -` with `script` inside the network namespace of `pid`.
fn nft_in(pid: i32, script: &str) -> Result<()> {
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let netns_fd = netns.as_raw_fd();
    let mut cmd = Command::new(tool("nft"));
    cmd.args(["-f", "-"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        Error::new(
            e.kind(),
            format!("could not run nft ({e}); install it with `apt-get install nftables`"),
        )
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    drop(netns);
    if !out.status.success() {
        return Err(Error::other(format!(
            "nft refused the egress rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Every address of this host's interfaces (they are denied too, whatever their range).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(list) };
    out.sort();
    out.dedup();
    out
}

/// The nftables table of a sandbox's namespace: loopback and slirp's resolver allowed, the
/// denied ranges and the host's own addresses rejected (at once, not silently dropped, so
/// a program sees "connection refused" instead of hanging), everything else allowed.
pub fn default_rules(host: &[IpAddr]) -> String {
    let mut v4: Vec<String> = DENIED_V4.iter().map(|s| s.to_string()).collect();
    let mut v6: Vec<String> = DENIED_V6.iter().map(|s| s.to_string()).collect();
    for a in host {
        match a {
            IpAddr::V4(a) => v4.push(a.to_string()),
            IpAddr::V6(a) => v6.push(a.to_string()),
        }
    }
    format!(
        "table inet openloop_egress {{
  set denied_v4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {v4} }} }}
  set denied_v6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {v6} }} }}
  chain output {{
    type filter hook output priority 0; policy accept;
    oifname \"lo\" accept
    ip daddr {RESOLVER} udp dport 53 accept
    ip daddr {RESOLVER} tcp dport 53 accept
    ip daddr @denied_v4 reject with icmpx type admin-prohibited
    ip6 daddr @denied_v6 reject with icmpx type admin-prohibited
  }}
}}
",
        v4 = v4.join(", "),
        v6 = v6.join(", ")
    )
}

/// The nftables table for a sandbox under `policy`: loopback and the resolver as always, the
/// host's own addresses and loopback ranges refused always; then either everything
/// (`allow_all`) or only the allowed networks at their ports.
pub fn policy_rules(policy: &EgressPolicy, host: &[IpAddr]) -> String {
    let mut v4: Vec<String> = vec!["127.0.0.0/8".into(), "0.0.0.0/8".into()];
    let mut v6: Vec<String> = vec!["::1/128".into(), "::/128".into()];
    for a in host {
        match a {
            IpAddr::V4(a) => v4.push(a.to_string()),
            IpAddr::V6(a) => v6.push(a.to_string()),
        }
    }
    let mut allow = String::new();
    for rule in &policy.allowed_cidrs {
        if rule.ports.is_empty() {
            allow.push_str(&format!("    ip daddr {} accept\n", rule.cidr));
        }
        for p in &rule.ports {
            let ports = match p.end_port {
                Some(end) if end > p.port => format!("{}-{end}", p.port),
                _ => p.port.to_string(),
            };
            let protocols: &[&str] = match p.protocol {
                Some(Protocol::Tcp) => &["tcp"],
                Some(Protocol::Udp) => &["udp"],
                None => &["tcp", "udp"],
            };
            for proto in protocols {
                allow.push_str(&format!(
                    "    ip daddr {} {proto} dport {ports} accept\n",
                    rule.cidr
                ));
            }
        }
    }
    let rest = if policy.allow_all {
        "    accept\n"
    } else {
        "    reject with icmpx type admin-prohibited\n"
    };
    // DNS: straight to the resolver with allow_all; through the name filter (redirected to it)
    // when hostnames are allowed; not at all otherwise.
    let (dns, names_set, names_rule, nat) = if policy.allow_all {
        (
            format!(
                "    ip daddr {RESOLVER} udp dport 53 accept\n    ip daddr {RESOLVER} tcp dport 53 accept\n"
            ),
            String::new(),
            String::new(),
            String::new(),
        )
    } else if policy.filters_names() {
        let port = crate::dns::LISTEN
            .rsplit_once(':')
            .map(|(_, p)| p)
            .unwrap_or("5353");
        (
            // The filter chain still sees the redirected query's original interface.
            format!("    ip daddr 127.0.0.1 udp dport {port} accept\n"),
            "  set allowed_hosts_v4 { type ipv4_addr; }\n".to_string(),
            "    ip daddr @allowed_hosts_v4 accept\n".to_string(),
            format!(
                "  chain dns_redirect {{\n    type nat hook output priority -100; policy accept;\n    ip daddr {RESOLVER} udp dport 53 redirect to :{port}\n  }}\n"
            ),
        )
    } else {
        (String::new(), String::new(), String::new(), String::new())
    };
    format!(
        "table inet openloop_egress {{
  set denied_v4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {v4} }} }}
  set denied_v6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {v6} }} }}
{names_set}{nat}  chain output {{
    type filter hook output priority 0; policy accept;
    oifname \"lo\" accept
{dns}    ip daddr @denied_v4 reject with icmpx type admin-prohibited
    ip6 daddr @denied_v6 reject with icmpx type admin-prohibited
{allow}{names_rule}{rest}  }}
}}
",
        v4 = v4.join(", "),
        v6 = v6.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_must_be_canonical_ipv4() {
        assert!(check_cidr("10.12.0.0/16").is_ok());
        assert!(check_cidr("0.0.0.0/0").is_ok());
        assert!(check_cidr("10.12.0.1/16")
            .unwrap_err()
            .contains("10.12.0.0/16"));
        assert!(check_cidr("10.12.0.0/33").is_err());
        assert!(check_cidr("example.com/8").is_err());
        assert!(check_cidr("10.0.0.0").is_err());
    }

    #[test]
    fn policies_allow_their_networks_and_ports_only() {
        let p = EgressPolicy {
            allowed_hostnames: vec![],
            resolver: None,
            allow_all: false,
            allowed_cidrs: vec![CidrRule {
                cidr: "192.168.77.0/24".into(),
                ports: vec![PortRule {
                    port: 80,
                    end_port: Some(81),
                    protocol: Some(Protocol::Tcp),
                }],
            }],
        };
        let r = policy_rules(&p, &["203.0.113.9".parse().unwrap()]);
        assert!(
            r.contains("ip daddr 192.168.77.0/24 tcp dport 80-81 accept"),
            "{r}"
        );
        assert!(!r.contains("udp dport 80"), "{r}");
        assert!(
            r.trim_end()
                .ends_with("reject with icmpx type admin-prohibited\n  }\n}"),
            "{r}"
        );
        assert!(r.contains("203.0.113.9"), "the host stays refused: {r}");
        let all = policy_rules(
            &EgressPolicy {
                allow_all: true,
                ..Default::default()
            },
            &[],
        );
        assert!(all.contains("    accept\n  }"), "{all}");
        assert!(all.contains("127.0.0.0/8"), "{all}");
    }

    #[test]
    fn rules_deny_the_ranges_and_the_host() {
        let r = default_rules(&[
            "203.0.113.9".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ]);
        for needle in [
            "169.254.0.0/16",
            "10.0.0.0/8",
            "fe80::/10",
            "203.0.113.9",
            "2001:db8::1",
            "ip daddr 10.0.2.3 udp dport 53 accept",
        ] {
            assert!(r.contains(needle), "{needle} missing:\n{r}");
        }
    }
}
