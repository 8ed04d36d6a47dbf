//! Commands running in devboxes: output kept as it arrives, waited on, streamed, killed.

use openloop_sandbox::{Devbox, OutputChunk};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Output kept per stream of one execution; beyond it the output is marked truncated.
pub const MAX_KEPT_OUTPUT: usize = 16 << 20;

#[derive(Default)]
struct State {
    status: &'static str,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_truncated: bool,
    stderr_truncated: bool,
    exit_status: Option<i32>,
    /// Set when the devbox failed under the command (not the command's own failure).
    error: Option<String>,
}

pub struct Execution {
    pub id: String,
    pub devbox_id: String,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// Which output stream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Execution {
    /// Start `command` in `devbox`; output is recorded as it arrives.
    pub fn start(
        id: String,
        devbox_id: String,
        devbox: Arc<Devbox>,
        command: String,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
    ) -> Arc<Execution> {
        let exec = Arc::new(Execution {
            id,
            devbox_id,
            state: Mutex::new(State {
                status: "running",
                ..State::default()
            }),
            version: watch::channel(0).0,
            task: Mutex::new(None),
        });
        let me = Arc::clone(&exec);
        let handle = tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let oom_before = devbox.oom_kills();
            let run = devbox.exec(&command, env, cwd, 0, Some(tx));
            let pump = async {
                while let Some(chunk) = rx.recv().await {
                    me.push(chunk);
                }
            };
            let (result, _) = tokio::join!(run, pump);
            match result {
                Ok(out) => {
                    if out.exit.signal == Some(9) && devbox.oom_kills() > oom_before {
                        me.push(OutputChunk::Stderr(
                            b"\nopenloop: the command was killed for using more than the devbox's memory limit\n".to_vec(),
                        ));
                    }
                    me.finish(out.exit.shell_code(), None)
                }
                Err(e) => me.finish(-1, Some(e.to_string())),
            }
        });
        if let Ok(mut t) = exec.task.lock() {
            *t = Some(handle.abort_handle());
        }
        exec
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
        self.version.send_modify(|v| *v += 1);
    }

    fn push(&self, chunk: OutputChunk) {
        self.update(|s| {
            let (buf, truncated, data) = match chunk {
                OutputChunk::Stdout(d) => (&mut s.stdout, &mut s.stdout_truncated, d),
                OutputChunk::Stderr(d) => (&mut s.stderr, &mut s.stderr_truncated, d),
            };
            let room = MAX_KEPT_OUTPUT.saturating_sub(buf.len());
            if data.len() > room {
                *truncated = true;
            }
            buf.extend_from_slice(&data[..data.len().min(room)]);
        });
    }

    fn finish(&self, exit: i32, error: Option<String>) {
        self.update(|s| {
            if s.status != "completed" {
                s.status = "completed";
                s.exit_status = Some(exit);
                s.error = error;
            }
        });
    }

    /// Kill the command's whole process tree (closing its agent connection does that).
    pub fn kill(&self) {
        if let Some(task) = self.task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
        self.finish(128 + 9, None);
    }

    pub fn is_completed(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.status == "completed")
            .unwrap_or(true)
    }

    /// The devbox failure that ended this command, if any.
    pub fn error(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.error.clone())
    }

    /// Wait until the status is one of `statuses`; false when `within` passed first.
    pub async fn wait_for(&self, statuses: &[String], within: Duration) -> bool {
        let mut rx = self.version.subscribe();
        let reached = |e: &Execution| {
            e.state
                .lock()
                .map(|s| statuses.iter().any(|w| w == s.status))
                .unwrap_or(true)
        };
        let wait = async {
            loop {
                if reached(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(within, wait).await.is_ok() && reached(self)
    }

    /// Runloop's `DevboxAsyncExecutionDetailView`; `last_n` keeps only the last lines of output.
    pub fn view(&self, last_n: Option<usize>) -> Value {
        let s = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let text = |b: &[u8]| tail_lines(&String::from_utf8_lossy(b), last_n);
        json!({
            "devbox_id": self.devbox_id,
            "execution_id": self.id,
            "status": s.status,
            "exit_status": s.exit_status,
            "stdout": text(&s.stdout),
            "stderr": text(&s.stderr),
            "stdout_truncated": s.stdout_truncated,
            "stderr_truncated": s.stderr_truncated,
        })
    }

    /// Runloop's `DevboxExecutionDetailView` (execute_sync).
    pub fn sync_view(&self) -> Value {
        let v = self.view(None);
        json!({
            "devbox_id": v["devbox_id"],
            "exit_status": v["exit_status"],
            "stdout": v["stdout"],
            "stderr": v["stderr"],
        })
    }

    /// Output of one stream from byte `offset`, and whether the command has completed.
    pub fn read_from(&self, which: Stream, offset: usize) -> (Vec<u8>, bool) {
        let s = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let buf = if which == Stream::Stdout {
            &s.stdout
        } else {
            &s.stderr
        };
        let start = offset.min(buf.len());
        (buf[start..].to_vec(), s.status == "completed")
    }

    /// A receiver that changes whenever output or status does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

fn tail_lines(text: &str, last_n: Option<usize>) -> String {
    match last_n {
        None => text.to_string(),
        Some(n) => {
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            lines[lines.len().saturating_sub(n)..].concat()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tail_lines;

    #[test]
    fn last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", Some(2)), "b\nc\n");
        assert_eq!(tail_lines("a\nb", Some(1)), "b");
        assert_eq!(tail_lines("a\nb", None), "a\nb");
        assert_eq!(tail_lines("", Some(3)), "");
    }
}
