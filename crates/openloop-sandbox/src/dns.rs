//! The DNS filter behind a network policy's `allowed_hostnames`.
//!
//! A sandbox under such a policy sends its DNS queries to slirp4netns's resolver as always;
//! its namespace's nftables table redirects them to a socket this filter holds inside that
//! namespace (made by a thread that entered it: a socket stays in the namespace it was made
//! in). A query for an allowed name (`example.com`, or any name below `*.example.com`) is
//! forwarded to the upstream resolver from the host's side, and the addresses of the answer
//! join the namespace's `allowed_hosts_v4` set before the answer goes back, so the
//! connection that follows is let through. Any other query is answered `REFUSED` and goes
//! nowhere. Messages are parsed with `hickory-proto`; nothing the sandbox sends reaches the
//! upstream unless it is a well-formed query for an allowed name.
//!
//! Blocking threads, so the jail launcher (which has no async runtime) can run it too.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use std::io::{Error, Result};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the filter listens inside the sandbox's namespace (DNS is redirected here).
pub const LISTEN: &str = "127.0.0.1:5353";
/// Queries answered at once; more are dropped (the client retries).
const MAX_IN_FLIGHT: usize = 32;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);

/// Which names a policy allows.
#[derive(Debug, Clone, Default)]
pub struct HostnameFilter {
    exact: Vec<String>,
    /// `.example.com` for `*.example.com`.
    suffixes: Vec<String>,
}

impl HostnameFilter {
    pub fn new(patterns: &[String]) -> HostnameFilter {
        let mut f = HostnameFilter::default();
        for p in patterns {
            let p = p.trim_end_matches('.').to_ascii_lowercase();
            match p.strip_prefix("*.") {
                Some(rest) => f.suffixes.push(format!(".{rest}")),
                None => f.exact.push(p),
            }
        }
        f
    }

    pub fn allows(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.exact.contains(&name) || self.suffixes.iter().any(|s| name.ends_with(s))
    }
}

/// A running filter; it stops when dropped.
pub struct DnsFilter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for DnsFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DnsFilter")
    }
}

impl Drop for DnsFilter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start the filter for the network namespace of `pid`, resolving allowed names at `upstream`.
pub fn start(pid: i32, filter: HostnameFilter, upstream: SocketAddr) -> Result<DnsFilter> {
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let inside = std::thread::spawn(move || -> Result<UdpSocket> {
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::last_os_error());
        }
        UdpSocket::bind(LISTEN)
    })
    .join()
    .map_err(|_| Error::other("the DNS filter's set-up thread panicked"))??;
    inside.set_read_timeout(Some(Duration::from_millis(200)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let state = Arc::new(State {
        socket: inside,
        filter,
        upstream,
        pid,
        in_flight: AtomicUsize::new(0),
    });
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("openloop-dns".into())
        .spawn(move || serve(state, stopping))?;
    Ok(DnsFilter {
        stop,
        thread: Some(thread),
    })
}

struct State {
    socket: UdpSocket,
    filter: HostnameFilter,
    upstream: SocketAddr,
    pid: i32,
    in_flight: AtomicUsize,
}

fn serve(state: Arc<State>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let (n, peer) = match state.socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => continue,
        };
        if state.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let query = buf[..n].to_vec();
        let worker = state.clone();
        let spawned = std::thread::Builder::new()
            .name("openloop-dns-query".into())
            .spawn(move || {
                answer(&worker, &query, peer);
                worker.in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Answer one query: forwarded when its name is allowed, `REFUSED` otherwise.
fn answer(state: &State, query: &[u8], peer: SocketAddr) {
    let Ok(msg) = Message::from_vec(query) else {
        return;
    };
    if msg.metadata.message_type != MessageType::Query {
        return;
    }
    let allowed = msg.queries.len() == 1 && state.filter.allows(&msg.queries[0].name.to_ascii());
    if !allowed {
        let mut refused =
            Message::error_msg(msg.metadata.id, msg.metadata.op_code, ResponseCode::Refused);
        refused.add_queries(msg.queries.clone());
        if let Ok(bytes) = refused.to_vec() {
            let _ = state.socket.send_to(&bytes, peer);
        }
        return;
    }
    let Some(reply) = forward(query, state.upstream) else {
        let failed = Message::error_msg(
            msg.metadata.id,
            msg.metadata.op_code,
            ResponseCode::ServFail,
        );
        if let Ok(bytes) = failed.to_vec() {
            let _ = state.socket.send_to(&bytes, peer);
        }
        return;
    };
    let Ok(parsed) = Message::from_vec(&reply) else {
        return;
    };
    if parsed.metadata.id != msg.metadata.id {
        return;
    }
    let addresses: Vec<Ipv4Addr> = parsed
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    if !addresses.is_empty() {
        if let Err(e) = crate::egress::allow_addresses(state.pid, &addresses) {
            tracing::warn!(error = %e, "could not allow a resolved address");
            return;
        }
    }
    let _ = state.socket.send_to(&reply, peer);
}

/// Send `query` to `upstream` from the host's side and wait for the answer.
fn forward(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let socket = UdpSocket::bind(local).ok()?;
    socket.set_read_timeout(Some(UPSTREAM_TIMEOUT)).ok()?;
    socket.connect(upstream).ok()?;
    socket.send(query).ok()?;
    let mut buf = vec![0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The first `nameserver` of the host's `/etc/resolv.conf`, at port 53.
pub fn host_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some("nameserver"))
            .then(|| parts.next())
            .flatten()
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_and_wildcards() {
        let f = HostnameFilter::new(&["GitHub.com".into(), "*.npmjs.org".into()]);
        assert!(f.allows("github.com"));
        assert!(f.allows("github.com."));
        assert!(!f.allows("api.github.com"));
        assert!(f.allows("registry.npmjs.org"));
        assert!(f.allows("a.b.npmjs.org."));
        assert!(!f.allows("npmjs.org"));
        assert!(!f.allows("evilnpmjs.org"));
        assert!(!f.allows("example.com"));
    }
}
