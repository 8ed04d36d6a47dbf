//! The engine socket where invocation children connect their streams.
//!
//! Every process of every run can reach this socket, so it is built to hold against them:
//! a connection must send its header within [`EngineLimits::header_timeout`]; connections
//! still waiting for their header are capped node-wide and per process (one whose header is
//! already there when it is accepted needs no such slot, so a flood does not starve real
//! runs); connections overall are capped; accept errors (`EMFILE`, …) back off instead of
//! spinning. A run's key admits one `control`, one `stdout` and one `stderr` connection, and
//! the two output streams must come from the process that connected `control` (the one the
//! server moves into the run's cgroup), by the kernel's `SO_PEERCRED`.

mod backoff;
mod wire;

pub use backoff::AcceptBackoff;
pub use wire::Channel;
use wire::{constant_time_eq, read_header, Header, MAX_HEADER};
pub(crate) use wire::{refuse, Refusal};

use openloop_sync::lock;
use rand::RngCore;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Limits of the engine socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// How long a new connection may take to send its header line.
    pub header_timeout: Duration,
    /// Connections waiting for their header, node-wide.
    pub max_pending: usize,
    /// Connections waiting for their header from one process.
    pub max_pending_per_process: usize,
    /// Connections open at once, run streams included (three per running run).
    pub max_connections: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            header_timeout: Duration::from_secs(5),
            max_pending: 256,
            max_pending_per_process: 16,
            max_connections: 8192,
        }
    }
}

/// One stream of a run: which it is, the socket, bytes that arrived after the header, and
/// the pid of the process that connected it. Holds its place among the open connections.
pub struct Connection {
    pub channel: Channel,
    pub stream: UnixStream,
    pub early: Vec<u8>,
    /// The connecting process, by `SO_PEERCRED`, as seen in the server's pid namespace.
    pub peer_pid: i32,
    /// The name the spare chose for itself (random, so only it and its warm process know
    /// it).
    pub spare: Option<String>,
    /// Its place among the open connections, given back when the stream is dropped.
    pub(crate) slot: OwnedSemaphorePermit,
}

struct Expected {
    key: String,
    tx: mpsc::UnboundedSender<Connection>,
}

/// Listens on `<run dir>/engine.sock` and hands each connection to the run it belongs to.
pub struct Channels {
    path: PathBuf,
    limits: EngineLimits,
    expected: Mutex<HashMap<String, Expected>>,
    connections: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    /// Connections waiting for their header, by connecting pid.
    pending_by_pid: Mutex<HashMap<i32, usize>>,
}

/// A registration (a warm process's, for its spares); its connections arrive on
/// `connections`. Unregisters on drop.
pub struct Registration {
    channels: Arc<Channels>,
    pub invocation_id: String,
    pub key: String,
    pub connections: mpsc::UnboundedReceiver<Connection>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.channels.expected).remove(&self.invocation_id);
    }
}

/// A place among the connections waiting for their header; given back on drop.
struct PendingSlot {
    channels: Arc<Channels>,
    pid: i32,
    _permit: OwnedSemaphorePermit,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut m = lock(&self.channels.pending_by_pid);
        if let Some(n) = m.get_mut(&self.pid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.pid);
            }
        }
    }
}

/// Rate-limited warning: at most one per second per call site's counter.
fn warn_refused(last: &mut Option<tokio::time::Instant>, refused: &mut u64, what: &str) {
    *refused += 1;
    let now = tokio::time::Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
        tracing::warn!(refused = *refused, "engine socket: {what}");
        *last = Some(now);
        *refused = 0;
    }
}

impl Channels {
    pub async fn bind(run_dir: &Path, limits: EngineLimits) -> std::io::Result<Arc<Channels>> {
        std::fs::create_dir_all(run_dir)?;
        let path = run_dir.join("engine.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        // Runs connect from inside their sandbox as an unprivileged uid; every connection
        // must still present its run's key.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
        let channels = Arc::new(Channels {
            path,
            limits,
            expected: Mutex::new(HashMap::new()),
            connections: Arc::new(Semaphore::new(limits.max_connections.max(3))),
            pending: Arc::new(Semaphore::new(limits.max_pending.max(1))),
            pending_by_pid: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&channels);
        tokio::spawn(async move {
            let mut backoff = AcceptBackoff::default();
            let (mut last_warn, mut refused) = (None, 0u64);
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => {
                        backoff.succeeded();
                        stream
                    }
                    Err(e) => {
                        backoff.failed(&e).await;
                        continue;
                    }
                };
                let Some(ch) = weak.upgrade() else { return };
                if let Err(what) = ch.accepted(stream) {
                    warn_refused(&mut last_warn, &mut refused, what);
                }
            }
        });
        Ok(channels)
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Expect the spares of one warm process under `invocation_id`, authenticated by a
    /// fresh key.
    pub fn register(self: &Arc<Self>, invocation_id: &str) -> Registration {
        let mut raw = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut raw);
        let key = hex::encode(raw);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.expected).insert(
            invocation_id.to_string(),
            Expected {
                key: key.clone(),
                tx,
            },
        );
        Registration {
            channels: Arc::clone(self),
            invocation_id: invocation_id.to_string(),
            key,
            connections: rx,
        }
    }

    /// A new connection, on the accept loop: closed at once when over a cap; otherwise its
    /// header is read (right here when it has already arrived) and it goes to its run.
    fn accepted(self: &Arc<Self>, stream: UnixStream) -> Result<(), &'static str> {
        let Ok(slot) = self.connections.clone().try_acquire_owned() else {
            return Err("connection limit reached; connection closed");
        };
        let pid = stream.peer_cred().ok().and_then(|c| c.pid()).unwrap_or(0);
        let mut buf = Vec::with_capacity(256);
        // A run's process sends its header right after connecting: it is usually there already.
        let mut chunk = [0u8; MAX_HEADER + 1];
        match stream.try_read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Ok(()),
        }
        let pending = if buf.contains(&b'\n') {
            None
        } else {
            Some(self.pending_slot(pid)?)
        };
        let deadline = tokio::time::Instant::now() + self.limits.header_timeout;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let header = tokio::time::timeout_at(deadline, read_header(&stream, buf)).await;
            drop(pending);
            if let Ok(Some((header, early))) = header {
                me.dispatch(stream, header, early, pid, slot);
            }
        });
        Ok(())
    }

    fn pending_slot(self: &Arc<Self>, pid: i32) -> Result<PendingSlot, &'static str> {
        let mut by_pid = lock(&self.pending_by_pid);
        let n = by_pid.entry(pid).or_insert(0);
        if *n >= self.limits.max_pending_per_process.max(1) {
            return Err(
                "one process holds too many connections without a header; connection closed",
            );
        }
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            if *n == 0 {
                by_pid.remove(&pid);
            }
            return Err("too many connections without a header; connection closed");
        };
        *n += 1;
        Ok(PendingSlot {
            channels: Arc::clone(self),
            pid,
            _permit: permit,
        })
    }

    /// Hand a connection to its registration; an unknown channel, registration or key is
    /// closed without a word.
    fn dispatch(
        &self,
        stream: UnixStream,
        header: Header,
        early: Vec<u8>,
        peer_pid: i32,
        slot: OwnedSemaphorePermit,
    ) {
        let Some(channel) = Channel::parse(&header.channel) else {
            return;
        };
        let m = lock(&self.expected);
        if let Some(e) = m
            .get(&header.invocation_id)
            .filter(|e| constant_time_eq(e.key.as_bytes(), header.key.as_bytes()))
        {
            let _ = e.tx.send(Connection {
                channel,
                stream,
                early,
                peer_pid,
                spare: header.spare,
                slot,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    async fn connect(path: &Path, header: Option<serde_json::Value>) -> UnixStream {
        let mut s = UnixStream::connect(path).await.unwrap();
        if let Some(h) = header {
            s.write_all(format!("{h}\n").as_bytes()).await.unwrap();
        }
        s
    }

    /// Reads until EOF; true when the server closed the connection.
    async fn closed_within(s: &mut UnixStream, within: Duration) -> Option<String> {
        let mut out = Vec::new();
        match tokio::time::timeout(within, s.read_to_end(&mut out)).await {
            Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn header_deadline_caps_and_spare_streams_only() {
        let dir = tempfile_dir();
        let limits = EngineLimits {
            header_timeout: Duration::from_millis(300),
            max_pending: 8,
            max_pending_per_process: 4,
            max_connections: 64,
        };
        let ch = Channels::bind(&dir, limits).await.unwrap();
        let path = ch.socket_path().to_path_buf();

        // Silent connections: the fifth from this process is closed at once, the others at
        // the deadline.
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(connect(&path, None).await);
        }
        let mut fifth = connect(&path, None).await;
        assert!(closed_within(&mut fifth, Duration::from_millis(200))
            .await
            .is_some());
        for s in &mut silent {
            assert!(closed_within(s, Duration::from_secs(2)).await.is_some());
        }

        // Each spare channel reaches its registration, with the connecting process's pid.
        let mut reg = ch.register("spares-1");
        let h = |c: &str| serde_json::json!({"invocation_id": "spares-1", "key": reg.key, "channel": c, "spare": "s1"});
        let _control = connect(&path, Some(h("spare"))).await;
        let _out = connect(&path, Some(h("spare_stdout"))).await;
        let _err = connect(&path, Some(h("spare_stderr"))).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let c = tokio::time::timeout(Duration::from_secs(2), reg.connections.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(c.peer_pid, std::process::id() as i32);
            assert_eq!(c.spare.as_deref(), Some("s1"));
            got.push(c.channel);
        }
        for c in [Channel::Spare, Channel::SpareStdout, Channel::SpareStderr] {
            assert!(got.contains(&c), "{got:?}");
        }
        // A channel that is not a spare's (no run connects its own streams): closed without
        // a word, never delivered.
        let mut other = connect(&path, Some(h("stdout"))).await;
        assert_eq!(
            closed_within(&mut other, Duration::from_secs(2))
                .await
                .as_deref(),
            Some("")
        );
        assert!(reg.connections.try_recv().is_err());

        // A wrong key: closed without a word.
        let mut wrong = connect(
            &path,
            Some(serde_json::json!({"invocation_id": "spares-1", "key": "0", "channel": "spare_stderr"})),
        )
        .await;
        assert_eq!(
            closed_within(&mut wrong, Duration::from_secs(2))
                .await
                .as_deref(),
            Some("")
        );
        drop(ch);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "openloop-channels-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
