//! The HTTP listener: accepting connections within limits.
//!
//! - A request's header must arrive within `http_header_timeout` (hyper's
//!   `header_read_timeout`; it also closes a keep-alive connection left idle that long).
//!   Once a request is read, nothing times it out: an `invoke_sync` may wait for hours.
//! - At most `http_max_connections` connections are open. At the cap the connection idle
//!   the longest (no request in flight, a streamed response counting as in flight) is closed
//!   to make room, and the new one waits until its descriptor is closed, so descriptors stay
//!   within the cap; when every connection is busy the new one is answered 503 and closed.
//! - Accept errors that retrying cannot fix at once (out of file descriptors) back off.
//! - TCP keepalive and `TCP_NODELAY` on every connection; a stop lets open requests finish
//!   within the caller's grace period.

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use openloop_runner::channels::AcceptBackoff;
use openloop_sync::lock;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

/// Where connections come from: the TCP port, or the Unix socket bound into the sandboxes of
/// function code (which has no network path to the host).
pub trait Listen: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
    /// Socket options for a new connection.
    fn prepare(_io: &Self::Io) {}
    /// Write what fits of `bytes` without waiting (to refuse a connection politely).
    fn try_write(io: &Self::Io, bytes: &[u8]);
}

impl Listen for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        TcpListener::accept(self).await.map(|(s, _)| s)
    }
    fn prepare(tcp: &Self::Io) {
        // Small responses and SSE events go out at once, not after the peer's delayed ACK;
        // keepalive probes keep a long `invoke_sync` from being dropped as idle on the way.
        let _ = tcp.set_nodelay(true);
        enable_keepalive(tcp);
    }
    fn try_write(io: &Self::Io, bytes: &[u8]) {
        let _ = io.try_write(bytes);
    }
}

impl Listen for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        UnixListener::accept(self).await.map(|(s, _)| s)
    }
    fn try_write(io: &Self::Io, bytes: &[u8]) {
        let _ = io.try_write(bytes);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// One open connection: how many of its requests are in flight, and a way to close it.
struct Conn {
    in_flight: AtomicUsize,
    /// Asked to close; it keeps its place until its descriptor is closed.
    closing: AtomicBool,
    close: tokio::sync::Notify,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Tracker {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    /// Signalled when a connection's descriptor has been closed.
    freed: tokio::sync::Notify,
}

/// What [`Tracker::admit`] decided for a new connection.
enum Admission {
    Admitted(u64, Arc<Conn>),
    /// At the cap, an idle connection is closing to make room: wait for `freed`, then ask again.
    MakingRoom,
    /// At the cap and every connection is busy.
    Full,
}

impl Tracker {
    /// Register a new connection below `max`. At `max`, ask the oldest idle connection to
    /// close; it counts until its task has closed it, so open descriptors never pass `max`.
    fn admit(&self, max: usize) -> Admission {
        let mut conns = lock(&self.conns);
        if conns.len() >= max.max(1) {
            if conns.values().any(|c| c.closing.load(Ordering::SeqCst)) {
                return Admission::MakingRoom;
            }
            let Some(idle) = conns
                .values()
                .find(|c| c.in_flight.load(Ordering::SeqCst) == 0)
            else {
                return Admission::Full;
            };
            idle.closing.store(true, Ordering::SeqCst);
            idle.close.notify_one();
            return Admission::MakingRoom;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            close: tokio::sync::Notify::new(),
        });
        conns.insert(id, conn.clone());
        Admission::Admitted(id, conn)
    }

    /// Admit, waiting (up to `patience`) while an idle connection closes to make room.
    async fn admit_waiting(&self, max: usize, patience: Duration) -> Option<(u64, Arc<Conn>)> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.admit(max) {
                Admission::Admitted(id, conn) => return Some((id, conn)),
                Admission::Full => return None,
                Admission::MakingRoom => {
                    if tokio::time::timeout_at(deadline, self.freed.notified())
                        .await
                        .is_err()
                    {
                        return None;
                    }
                }
            }
        }
    }

    /// A connection's descriptor is closed.
    fn remove(&self, id: u64) {
        lock(&self.conns).remove(&id);
        self.freed.notify_one();
    }
}

/// Counts a request in flight until its response body has been sent (or dropped).
struct InFlight(Arc<Conn>);

impl InFlight {
    fn new(conn: &Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(conn.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight while it streams.
struct Counted {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Counted {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Turn on TCP keepalive: first probe after 60 s of silence, then every 20 s.
fn enable_keepalive(tcp: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    let set = |level: libc::c_int, opt: libc::c_int, value: libc::c_int| unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 60);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 20);
}

/// Serve `router` on `listener` until `shutdown` resolves, then give open requests `grace`
/// to finish.
pub async fn serve<L: Listen>(
    listener: L,
    router: Router,
    limits: HttpLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) {
    let tracker = Arc::new(Tracker::default());
    // Connections are served with upgrades (WebSocket through a tunnel); an upgraded one
    // leaves this listener (see `routes::tunnel_proxy`, which caps them).
    let (stopping, stop_rx) = tokio::sync::watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut backoff = AcceptBackoff::default();
    let mut refused_since_warn = 0u64;
    let mut last_warn: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(tcp) => {
                    backoff.succeeded();
                    tcp
                }
                Err(e) => {
                    backoff.failed(&e).await;
                    continue;
                }
            },
        };
        let admitted = tracker
            .admit_waiting(limits.max_connections, Duration::from_secs(1))
            .await;
        let Some((id, conn)) = admitted else {
            // Every connection is busy with a request: say so and close.
            L::try_write(
                &tcp,
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            refused_since_warn += 1;
            let now = tokio::time::Instant::now();
            if last_warn.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                tracing::warn!(
                    refused = refused_since_warn,
                    max = limits.max_connections,
                    "HTTP connection limit reached with every connection busy; refusing"
                );
                refused_since_warn = 0;
                last_warn = Some(now);
            }
            continue;
        };
        L::prepare(&tcp);
        let router = TowerToHyperService::new(router.clone());
        let counted = conn.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let in_flight = InFlight::new(&counted);
            let call = hyper::service::Service::call(&router, req.map(Body::new));
            async move {
                let response = call.await?;
                Ok::<_, std::convert::Infallible>(response.map(|inner| {
                    Body::new(Counted {
                        inner,
                        _in_flight: in_flight,
                    })
                }))
            }
        });
        let connection = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let tracker = tracker.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let stopped = tokio::select! {
                _ = connection.as_mut() => false,
                _ = conn.close.notified() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopped {
                // Finish the request in flight, then close.
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = conn.close.notified() => {}
                }
            }
            tracker.remove(id);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    let drained = async {
        loop {
            let freed = tracker.freed.notified();
            if lock(&tracker.conns).is_empty() {
                return;
            }
            freed.await;
        }
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("requests still open {grace:?} after the stop signal; stopping anyway");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(a: Admission) -> (u64, Arc<Conn>) {
        match a {
            Admission::Admitted(id, conn) => (id, conn),
            _ => panic!("expected the connection to be admitted"),
        }
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let t = Tracker::default();
        let (a, ca) = admitted(t.admit(2));
        let (b, cb) = admitted(t.admit(2));
        let busy_a = InFlight::new(&ca);
        // a is busy, b idle: b is asked to close, and counts until its descriptor is closed.
        assert!(matches!(t.admit(2), Admission::MakingRoom));
        assert!(cb.closing.load(Ordering::SeqCst));
        assert!(!ca.closing.load(Ordering::SeqCst));
        assert!(matches!(t.admit(2), Admission::MakingRoom));
        assert_eq!(t.conns.lock().unwrap().len(), 2);
        t.remove(b);
        let (_c, cc) = admitted(t.admit(2));
        assert!(t.conns.lock().unwrap().contains_key(&a));
        assert_eq!(t.conns.lock().unwrap().len(), 2);
        let _busy_c = InFlight::new(&cc);
        // All busy: refused.
        assert!(matches!(t.admit(2), Admission::Full));
        drop(busy_a);
        assert!(matches!(t.admit(2), Admission::MakingRoom));
        assert!(ca.closing.load(Ordering::SeqCst));
        t.remove(a);
        admitted(t.admit(2));
        assert!(!t.conns.lock().unwrap().contains_key(&a));
    }

    #[tokio::test]
    async fn a_new_connection_waits_for_the_closing_one() {
        let t = Arc::new(Tracker::default());
        let (a, _ca) = admitted(t.admit(1));
        let closer = t.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            closer.remove(a);
        });
        let (b, _) = t
            .admit_waiting(1, Duration::from_secs(5))
            .await
            .expect("room made once the idle connection closed");
        assert_ne!(a, b);
        task.await.unwrap();
    }
}
