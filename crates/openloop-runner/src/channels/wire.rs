//! What travels on the engine socket before a stream is handed over: the header line a
//! connection opens with (its invocation, key and channel), and the refusal written back to
//! one that is turned away.

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Longest header line accepted.
pub(super) const MAX_HEADER: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A run's output streams, once its spare's are handed to it (labels only: nothing
    /// connects under these names).
    Stdout,
    Stderr,
    /// A warm process's next run process, isolated and waiting: it registers ahead of its run
    /// so that the server can move it into a cgroup off the run's path (any number of times
    /// per registration, one connection per process). It becomes the run's control stream:
    /// its run comes on it, and its result goes back on it.
    Spare,
    /// A spare's output streams, connected ahead of its run like its control stream (and
    /// held to the same process).
    SpareStdout,
    SpareStderr,
}

impl Channel {
    pub(super) fn parse(s: &str) -> Option<Channel> {
        match s {
            "spare" => Some(Channel::Spare),
            "spare_stdout" => Some(Channel::SpareStdout),
            "spare_stderr" => Some(Channel::SpareStderr),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Channel::Stdout => "stdout",
            Channel::Stderr => "stderr",
            Channel::Spare => "spare",
            Channel::SpareStdout => "spare_stdout",
            Channel::SpareStderr => "spare_stderr",
        }
    }
}

/// Why a spare's connection was turned away (written back to it as one JSON line, then
/// closed).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "only a process its warm process forked, still in that process's cgroup, can register as a spare"
    )]
    NotASpare,
    #[error("no spare of that name waits for its {0} stream from this process")]
    NoSuchSpare(&'static str),
}

/// Tell a connection why it was turned away (best effort, never waiting), then close it.
pub(crate) async fn refuse(mut stream: UnixStream, why: Refusal) {
    let line = format!("{}\n", serde_json::json!({"error": why.to_string()}));
    let _ = stream.try_write(line.as_bytes());
    let _ = stream.shutdown().await;
}

#[derive(serde::Deserialize)]
pub(super) struct Header {
    pub(super) invocation_id: String,
    pub(super) key: String,
    pub(super) channel: String,
    /// A spare's own name (spare channels only).
    #[serde(default)]
    pub(super) spare: Option<String>,
}

/// Read up to the header's newline (at most [`MAX_HEADER`] bytes); returns the header and
/// the bytes that followed it.
pub(super) async fn read_header(
    stream: &UnixStream,
    mut buf: Vec<u8>,
) -> Option<(Header, Vec<u8>)> {
    let mut chunk = [0u8; MAX_HEADER + 1];
    let newline = loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            break pos;
        }
        if buf.len() > MAX_HEADER {
            return None;
        }
        stream.readable().await.ok()?;
        match stream.try_read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    };
    let early = buf.split_off(newline + 1);
    let header = serde_json::from_slice::<Header>(&buf[..newline]).ok()?;
    Some((header, early))
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
