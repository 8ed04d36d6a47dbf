//! A run's output: its `stdout` and `stderr` streams and the `logging` records on its
//! control stream become log records, within the run's [`LogLimits`]; the control stream's
//! result frame is its outcome.

use crate::channels::{Channel, Connection};
use openloop_sync::lock;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Longest log line kept as one line; longer output is split.
const MAX_LINE: usize = 16 * 1024;
/// Log records waiting to be stored, per run: when full, reading the run's output waits
/// (the run's writes block on its full socket) instead of buffering in the server.
pub const LOG_CHANNEL_RECORDS: usize = 256;
/// One read of output holding more lines than this is a flood of small lines: consecutive
/// lines are merged into records of up to [`MERGED_RECORD`] bytes.
const MERGE_AFTER_LINES: usize = 64;
const MERGED_RECORD: usize = 1024;
/// Largest control frame (a result) accepted.
const MAX_CONTROL_FRAME: usize = 256 << 20;

/// How much output of one run is kept (stdout, stderr and `logging` together); beyond either
/// cap the run goes on but its output is dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_bytes: u64,
    pub max_lines: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_bytes: 128 << 20,
            max_lines: 1_000_000,
        }
    }
}

/// The bounded channel a run's log records travel on.
pub fn log_channel() -> (mpsc::Sender<LogLine>, mpsc::Receiver<LogLine>) {
    mpsc::channel(LOG_CHANNEL_RECORDS)
}

#[derive(Default)]
struct Spent {
    lines: u64,
    bytes: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
    reached: bool,
}

/// What one run's output may still use of its [`LogLimits`], shared by its three readers.
pub(crate) struct LogBudget {
    limits: LogLimits,
    spent: std::sync::Mutex<Spent>,
}

enum Admit {
    Keep,
    Drop,
    /// Dropped, and the first to be: say so in the log.
    DropFirst,
}

impl LogBudget {
    pub(crate) fn new(limits: LogLimits) -> Self {
        LogBudget {
            limits,
            spent: std::sync::Mutex::new(Spent::default()),
        }
    }

    /// Count `lines` lines of `bytes` bytes (newlines included) against the caps.
    fn admit(&self, lines: u64, bytes: u64) -> Admit {
        let mut s = lock(&self.spent);
        if !s.reached
            && s.lines + lines <= self.limits.max_lines
            && s.bytes + bytes <= self.limits.max_bytes
        {
            s.lines += lines;
            s.bytes += bytes;
            return Admit::Keep;
        }
        s.dropped_lines += lines;
        s.dropped_bytes += bytes;
        if s.reached {
            Admit::Drop
        } else {
            s.reached = true;
            Admit::DropFirst
        }
    }

    pub(crate) fn dropped(&self) -> (u64, u64) {
        let s = lock(&self.spent);
        (s.dropped_lines, s.dropped_bytes)
    }

    pub(crate) fn caps(&self) -> String {
        format!(
            "{} lines / {} bytes per run",
            self.limits.max_lines, self.limits.max_bytes
        )
    }

    /// Send `record` if the budget allows it; the first record over the caps is replaced by
    /// a notice that output is being dropped from now on.
    async fn send(&self, logs: &mpsc::Sender<LogLine>, lines: u64, record: LogLine) {
        // The record's text and its final newline (merged lines keep theirs inside).
        let bytes = record.message.len() as u64 + 1;
        match self.admit(lines, bytes) {
            Admit::Keep => {
                let _ = logs.send(record).await;
            }
            Admit::Drop => {}
            Admit::DropFirst => {
                let _ = logs
                    .send(notice(format!(
                        "log limit reached ({}): further output of this run is dropped",
                        self.caps()
                    )))
                    .await;
            }
        }
    }
}

pub(crate) fn notice(message: String) -> LogLine {
    LogLine {
        ts_ms: now_ms(),
        stream: "log",
        level: Some("WARNING".into()),
        message,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub ts_ms: i64,
    /// `stdout`, `stderr` or `log`.
    pub stream: &'static str,
    pub level: Option<String>,
    pub message: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) async fn read_control(
    conn: Connection,
    logs: mpsc::Sender<LogLine>,
    budget: Arc<LogBudget>,
) -> Option<Value> {
    let Connection {
        stream,
        early,
        slot: _slot,
        ..
    } = conn;
    let mut s = std::io::Cursor::new(early).chain(stream);
    let mut outcome = None;
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).await.is_err() {
            return outcome;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_CONTROL_FRAME {
            return Some(json!({"type": "error", "error": {
                "type": "ResultTooLarge",
                "message": format!("the result frame of {len} bytes is over the {MAX_CONTROL_FRAME}-byte limit"),
                "traceback": null}}));
        }
        let mut buf = vec![0u8; len];
        if s.read_exact(&mut buf).await.is_err() {
            return outcome;
        }
        let Ok(frame) = serde_json::from_slice::<Value>(&buf) else {
            continue;
        };
        match frame["type"].as_str() {
            Some("log") => {
                let ts_ms = frame["ts_ms"].as_i64().unwrap_or_else(now_ms);
                let level = frame["level"].as_str().map(str::to_string);
                let message = frame["message"].as_str().unwrap_or_default();
                // A record is at most MAX_LINE bytes, like output lines.
                for part in split_at_char_boundaries(message, MAX_LINE) {
                    let lines = 1 + part.matches('\n').count() as u64;
                    let record = LogLine {
                        ts_ms,
                        stream: "log",
                        level: level.clone(),
                        message: part.to_string(),
                    };
                    budget.send(&logs, lines, record).await;
                }
            }
            Some("result") | Some("error") => outcome = Some(frame),
            _ => {}
        }
    }
}

/// `text` in pieces of at most `max` bytes, cut on character boundaries (one empty piece
/// for an empty text).
fn split_at_char_boundaries(text: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        parts.push(head);
        rest = tail;
    }
    parts.push(rest);
    parts
}

/// Turns a run's output into log records: one per line, except that a read holding a flood
/// of lines merges consecutive ones into records of up to [`MERGED_RECORD`] bytes. Reading
/// waits while the log channel is full; past the run's log caps, output is read and dropped.
pub(crate) async fn read_output(
    conn: Connection,
    logs: mpsc::Sender<LogLine>,
    budget: Arc<LogBudget>,
) {
    let stream = if conn.channel == Channel::Stdout {
        "stdout"
    } else {
        "stderr"
    };
    let Connection {
        stream: mut s,
        early,
        slot: _slot,
        ..
    } = conn;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = early;
    let record = |bytes: &[u8]| LogLine {
        ts_ms: now_ms(),
        stream,
        level: None,
        message: String::from_utf8_lossy(bytes).into_owned(),
    };
    let mut eof = false;
    while !eof {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => eof = true,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        };
        let flood = pending.iter().filter(|&&b| b == b'\n').count() > MERGE_AFTER_LINES;
        // Lines merged so far: (first byte, end, how many).
        let mut merged: Option<(usize, usize, u64)> = None;
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            if flood && end - start <= MERGED_RECORD {
                match merged {
                    Some((from, _, n)) if end - from <= MERGED_RECORD => {
                        merged = Some((from, end, n + 1));
                    }
                    Some((from, to, n)) => {
                        budget.send(&logs, n, record(&pending[from..to])).await;
                        merged = Some((start, end, 1));
                    }
                    None => merged = Some((start, end, 1)),
                }
            } else {
                if let Some((from, to, n)) = merged.take() {
                    budget.send(&logs, n, record(&pending[from..to])).await;
                }
                // A record holds at most MAX_LINE bytes; a longer line is split.
                let line = &pending[start..end];
                let mut piece = 0;
                loop {
                    let to = (piece + MAX_LINE).min(line.len());
                    budget.send(&logs, 1, record(&line[piece..to])).await;
                    piece = to;
                    if piece >= line.len() {
                        break;
                    }
                }
            }
            start = end + 1;
        }
        if let Some((from, to, n)) = merged {
            budget.send(&logs, n, record(&pending[from..to])).await;
        }
        pending.drain(..start);
        while pending.len() > MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            budget.send(&logs, 1, record(&pending)).await;
            pending = rest;
        }
    }
    if !pending.is_empty() {
        budget.send(&logs, 1, record(&pending)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_to_its_caps_and_counts_the_rest() {
        let b = LogBudget::new(LogLimits {
            max_bytes: 100,
            max_lines: 3,
        });
        assert!(matches!(b.admit(2, 10), Admit::Keep));
        assert!(matches!(b.admit(2, 10), Admit::DropFirst));
        assert!(matches!(b.admit(1, 10), Admit::Drop));
        assert_eq!(b.dropped(), (3, 20));
        let b = LogBudget::new(LogLimits {
            max_bytes: 15,
            max_lines: 100,
        });
        assert!(matches!(b.admit(1, 10), Admit::Keep));
        assert!(matches!(b.admit(1, 10), Admit::DropFirst));
    }

    /// The records `read_output` makes of `data` written on a stdout stream.
    async fn records_of(data: Vec<u8>, limits: LogLimits) -> Vec<LogLine> {
        use tokio::io::AsyncWriteExt;
        let (mut ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let conn = Connection {
            channel: Channel::Stdout,
            stream: theirs,
            early: Vec::new(),
            peer_pid: 1,
            spare: None,
            slot: Arc::new(tokio::sync::Semaphore::new(1))
                .try_acquire_owned()
                .unwrap(),
        };
        let (tx, mut rx) = log_channel();
        let budget = Arc::new(LogBudget::new(limits));
        let reader = tokio::spawn(read_output(conn, tx, budget));
        let writer = tokio::spawn(async move {
            ours.write_all(&data).await.unwrap();
        });
        let mut out = Vec::new();
        while let Some(l) = rx.recv().await {
            out.push(l);
        }
        writer.await.unwrap();
        reader.await.unwrap();
        out
    }

    #[tokio::test]
    async fn output_becomes_records_merged_split_and_capped() {
        let few = records_of(b"a\nb\n\nc".to_vec(), LogLimits::default()).await;
        let msgs: Vec<&str> = few.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(msgs, ["a", "b", "", "c"]);

        let flood = records_of(b"x\n".repeat(10_000), LogLimits::default()).await;
        let lines: usize = flood.iter().map(|l| l.message.split('\n').count()).sum();
        assert_eq!(lines, 10_000);
        assert!(flood.len() < 100, "{} records", flood.len());
        assert!(flood.iter().all(|l| l.message.len() <= MERGED_RECORD));

        let mut long = vec![b'y'; 40_000];
        long.push(b'\n');
        let split = records_of(long, LogLimits::default()).await;
        let sizes: Vec<usize> = split.iter().map(|l| l.message.len()).collect();
        assert_eq!(sizes, [MAX_LINE, MAX_LINE, 40_000 - 2 * MAX_LINE]);

        let capped = records_of(
            (0..20)
                .map(|i| format!("line {i}\n"))
                .collect::<String>()
                .into_bytes(),
            LogLimits {
                max_bytes: 1 << 20,
                max_lines: 10,
            },
        )
        .await;
        assert_eq!(capped.len(), 11);
        assert_eq!(capped[9].message, "line 9");
        assert_eq!(capped[10].stream, "log");
        assert!(capped[10].message.starts_with("log limit reached"));
    }

    #[test]
    fn long_messages_split_on_characters() {
        assert_eq!(split_at_char_boundaries("", 4), vec![""]);
        assert_eq!(split_at_char_boundaries("abcdef", 4), vec!["abcd", "ef"]);
        assert_eq!(split_at_char_boundaries("aé", 2), vec!["a", "é"]);
    }
}
