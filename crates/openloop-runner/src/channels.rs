//! The engine socket where invocation children connect their streams.

use rand::RngCore;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Control,
    Stdout,
    Stderr,
}

/// One stream of a run: which it is, the socket, and bytes that arrived after the header.
pub struct Connection {
    pub channel: Channel,
    pub stream: UnixStream,
    pub early: Vec<u8>,
}

struct Expected {
    key: String,
    tx: mpsc::UnboundedSender<Connection>,
}

/// Listens on `<run dir>/engine.sock` and hands each connection to the run it belongs to.
pub struct Channels {
    path: PathBuf,
    expected: Mutex<HashMap<String, Expected>>,
}

/// A registration; the run's connections arrive on `connections`. Unregisters on drop.
pub struct Registration {
    channels: Arc<Channels>,
    pub invocation_id: String,
    pub key: String,
    pub connections: mpsc::UnboundedReceiver<Connection>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut m) = self.channels.expected.lock() {
            m.remove(&self.invocation_id);
        }
    }
}

impl Channels {
    pub async fn bind(run_dir: &Path) -> std::io::Result<Arc<Channels>> {
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
            expected: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&channels);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let Some(ch) = weak.upgrade() else { return };
                tokio::spawn(async move { ch.dispatch(stream).await });
            }
        });
        Ok(channels)
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Expect the connections of one invocation, authenticated by a fresh key.
    pub fn register(self: &Arc<Self>, invocation_id: &str) -> Registration {
        let mut raw = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut raw);
        let key = hex::encode(raw);
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut m) = self.expected.lock() {
            m.insert(
                invocation_id.to_string(),
                Expected {
                    key: key.clone(),
                    tx,
                },
            );
        }
        Registration {
            channels: Arc::clone(self),
            invocation_id: invocation_id.to_string(),
            key,
            connections: rx,
        }
    }

    async fn dispatch(&self, mut stream: UnixStream) {
        // The header is one JSON line of at most 1 KiB; it normally arrives in one read.
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        let newline = loop {
            if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                break pos;
            }
            if buf.len() > 1024 {
                return;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let early = buf.split_off(newline + 1);
        let header = &buf[..newline];
        #[derive(serde::Deserialize)]
        struct Header {
            invocation_id: String,
            key: String,
            channel: String,
        }
        let Ok(h) = serde_json::from_slice::<Header>(header) else {
            return;
        };
        let channel = match h.channel.as_str() {
            "control" => Channel::Control,
            "stdout" => Channel::Stdout,
            "stderr" => Channel::Stderr,
            _ => return,
        };
        let tx = match self.expected.lock() {
            Ok(m) => match m.get(&h.invocation_id) {
                Some(e) if e.key == h.key => e.tx.clone(),
                _ => return,
            },
            Err(_) => return,
        };
        let _ = tx.send(Connection {
            channel,
            stream,
            early,
        });
    }
}
