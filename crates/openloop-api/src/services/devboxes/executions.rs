//! Commands running in devboxes: output written to disk as it arrives, waited on, streamed,
//! killed.
//!
//! Each execution's stdout and stderr go to files under `<data>/exec-output/<devbox id>/`
//! (root-only, never mounted into a sandbox), removed with the devbox; the server keeps only
//! their lengths. Each stream keeps at most [`MAX_KEPT_OUTPUT`] bytes, and all executions of
//! one devbox together at most the configured `devbox_exec_output_bytes`; output past either
//! is dropped and the stream marked truncated. Values of the secrets the devbox was given are
//! redacted before output is written, so every reader (views, streams) sees only the marker.

use super::stdin::StdinPipe;
use crate::model::{ExecutionResult, ExecutionStatus, ExecutionView};
use crate::services::secrets::{Redactor, StreamRedactor};
use openloop_sandbox::{Devbox, OutputChunk};
use openloop_sync::lock;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Output kept per stream of one execution; beyond it the output is marked truncated.
pub const MAX_KEPT_OUTPUT: usize = 16 << 20;
/// Largest piece of output one streamed event carries.
const MAX_STREAM_CHUNK: usize = 1 << 20;

/// Bytes of execution output one devbox may keep on disk, shared by its executions.
pub struct OutputBudget {
    limit: u64,
    used: AtomicU64,
}

impl OutputBudget {
    pub fn new(limit: u64) -> Self {
        OutputBudget {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// Take up to `want` bytes; returns how many were granted.
    fn take(&self, want: u64) -> u64 {
        let mut granted = 0;
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                granted = want.min(self.limit.saturating_sub(used));
                Some(used + granted)
            });
        granted
    }

    fn give_back(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// Where an execution's output goes.
#[derive(Clone)]
pub struct OutputStore {
    /// The devbox's directory of output files.
    pub dir: PathBuf,
    pub budget: Arc<OutputBudget>,
    /// The devbox's secret values, replaced before anything is written.
    pub redactor: Arc<Redactor>,
}

#[derive(Default, Clone, Copy)]
struct Kept {
    /// Bytes written to the stream's file (what readers may read).
    len: u64,
    truncated: bool,
}

struct State {
    status: ExecutionStatus,
    stdout: Kept,
    stderr: Kept,
    exit_status: Option<i32>,
    /// Set when the devbox failed under the command (not the command's own failure).
    error: Option<String>,
}

pub struct Execution {
    pub id: String,
    pub devbox_id: String,
    /// The command line as given (shown in the dashboard).
    pub command: String,
    pub started_at_ms: i64,
    dir: PathBuf,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// The command's standard input (`attach_stdin`), see [`super::stdin`].
    pub stdin: StdinPipe,
}

/// Which output stream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn suffix(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl Execution {
    /// Start `command` in `devbox`; output is written to `output` as it arrives. With
    /// `attach_stdin`, its standard input is a pipe fed through [`Execution::stdin`].
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        id: String,
        devbox_id: String,
        devbox: Arc<Devbox>,
        command: String,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
        output: OutputStore,
        attach_stdin: bool,
    ) -> Arc<Execution> {
        let (stdin, stdin_rx) = if attach_stdin {
            let (pipe, rx) = StdinPipe::attached();
            (pipe, Some(rx))
        } else {
            (StdinPipe::detached(), None)
        };
        let exec = Arc::new(Execution {
            stdin,
            id,
            devbox_id,
            command: command.clone(),
            started_at_ms: openloop_store::now_ms(),
            dir: output.dir.clone(),
            state: Mutex::new(State {
                status: ExecutionStatus::Running,
                stdout: Kept::default(),
                stderr: Kept::default(),
                exit_status: None,
                error: None,
            }),
            version: watch::channel(0).0,
            task: Mutex::new(None),
        });
        let me = Arc::clone(&exec);
        let handle = tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let oom_before = devbox.oom_kills();
            let run = devbox.exec_attached(&command, env, cwd, 0, Some(tx), stdin_rx);
            let mut files = Files::default();
            let pump = async {
                // Chunks that arrived while the last write went on are written together, so
                // the writes keep up with the command and output does not pile up here.
                while let Some(first) = rx.recv().await {
                    let (mut out, mut err) = (Vec::new(), Vec::new());
                    let mut next = Some(first);
                    while let Some(c) = next.take() {
                        match c {
                            OutputChunk::Stdout(d) => out.extend_from_slice(&d),
                            OutputChunk::Stderr(d) => err.extend_from_slice(&d),
                        }
                        if out.len() + err.len() < MAX_STREAM_CHUNK {
                            next = rx.try_recv().ok();
                        }
                    }
                    if !out.is_empty() {
                        me.push(&output, &mut files, OutputChunk::Stdout(out)).await;
                    }
                    if !err.is_empty() {
                        me.push(&output, &mut files, OutputChunk::Stderr(err)).await;
                    }
                }
                me.flush_redacted(&output, &mut files).await;
            };
            let (result, _) = tokio::join!(run, pump);
            match result {
                Ok(out) => {
                    if out.exit.signal == Some(9) && devbox.oom_kills() > oom_before {
                        me.push(&output, &mut files, OutputChunk::Stderr(
                            b"\nopenloop: the command was killed for using more than the devbox's memory limit\n".to_vec(),
                        )).await;
                        me.flush_redacted(&output, &mut files).await;
                    }
                    me.finish(out.exit.shell_code(), None)
                }
                Err(e) => me.finish(-1, Some(e.to_string())),
            }
        });
        *lock(&exec.task) = Some(handle.abort_handle());
        exec
    }

    fn path(&self, which: Stream) -> PathBuf {
        self.dir.join(format!("{}.{}", self.id, which.suffix()))
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut lock(&self.state));
        self.version.send_modify(|v| *v += 1);
    }

    /// Append a chunk to its stream's file, secrets redacted (a piece that could be the start
    /// of a value waits for the next chunk), within the stream's and the devbox's caps.
    async fn push(&self, output: &OutputStore, files: &mut Files, chunk: OutputChunk) {
        let (which, data) = match chunk {
            OutputChunk::Stdout(d) => (Stream::Stdout, d),
            OutputChunk::Stderr(d) => (Stream::Stderr, d),
        };
        let data = files.redact(which).push(&output.redactor, &data);
        self.write_kept(output, files, which, data).await;
    }

    /// Write what redaction held back at the end of the streams.
    async fn flush_redacted(&self, output: &OutputStore, files: &mut Files) {
        for which in [Stream::Stdout, Stream::Stderr] {
            let rest = files.redact(which).finish(&output.redactor);
            if !rest.is_empty() {
                self.write_kept(output, files, which, rest).await;
            }
        }
    }

    async fn write_kept(
        &self,
        output: &OutputStore,
        files: &mut Files,
        which: Stream,
        data: Vec<u8>,
    ) {
        if data.is_empty() {
            return;
        }
        let kept = self.kept(which);
        let room = (MAX_KEPT_OUTPUT as u64).saturating_sub(kept.len);
        let want = (data.len() as u64).min(room);
        let granted = output.budget.take(want);
        let mut written = 0;
        if granted > 0 {
            match files
                .write(&self.path(which), which, &data[..granted as usize])
                .await
            {
                Ok(()) => written = granted,
                Err(e) => {
                    tracing::warn!(execution = %self.id, error = %e, "could not keep execution output");
                    output.budget.give_back(granted);
                }
            }
        }
        let truncated = written < data.len() as u64;
        self.update(|s| {
            let k = if which == Stream::Stdout {
                &mut s.stdout
            } else {
                &mut s.stderr
            };
            k.len += written;
            k.truncated |= truncated;
        });
    }

    fn kept(&self, which: Stream) -> Kept {
        let s = lock(&self.state);
        if which == Stream::Stdout {
            s.stdout
        } else {
            s.stderr
        }
    }

    fn finish(&self, exit: i32, error: Option<String>) {
        self.update(|s| {
            if s.status != ExecutionStatus::Completed {
                s.status = ExecutionStatus::Completed;
                s.exit_status = Some(exit);
                s.error = error;
            }
        });
    }

    /// Kill the command's whole process tree (closing its agent connection does that).
    pub fn kill(&self) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            task.abort();
        }
        self.finish(128 + 9, None);
    }

    pub fn is_completed(&self) -> bool {
        lock(&self.state).status == ExecutionStatus::Completed
    }

    /// The devbox failure that ended this command, if any.
    pub fn error(&self) -> Option<String> {
        lock(&self.state).error.clone()
    }

    /// Wait until the status is one of `statuses`; false when `within` passed first.
    pub async fn wait_for(&self, statuses: &[ExecutionStatus], within: Duration) -> bool {
        let mut rx = self.version.subscribe();
        let reached = |e: &Execution| statuses.contains(&lock(&e.state).status);
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

    /// The first `len` bytes of one stream's file (empty when nothing was kept).
    async fn read_kept(&self, which: Stream, offset: u64, len: u64) -> Vec<u8> {
        if len <= offset {
            return Vec::new();
        }
        let read = async {
            let mut f = tokio::fs::File::open(self.path(which)).await?;
            f.seek(std::io::SeekFrom::Start(offset)).await?;
            let mut buf = Vec::with_capacity((len - offset) as usize);
            f.take(len - offset).read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        read.await.unwrap_or_default()
    }

    /// Runloop's `DevboxAsyncExecutionDetailView`; `last_n` keeps only the last lines of output.
    pub async fn view(&self, last_n: Option<usize>) -> ExecutionView {
        let (status, exit_status, out, err) = {
            let s = lock(&self.state);
            (s.status, s.exit_status, s.stdout, s.stderr)
        };
        let stdout = self.read_kept(Stream::Stdout, 0, out.len).await;
        let stderr = self.read_kept(Stream::Stderr, 0, err.len).await;
        // Output can be 16 MiB a stream: moved into the view, copied only for a tail.
        let text = |b: Vec<u8>| {
            let all = String::from_utf8(b)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            match last_n {
                None => all,
                Some(_) => tail_lines(&all, last_n),
            }
        };
        ExecutionView {
            devbox_id: self.devbox_id.clone(),
            execution_id: self.id.clone(),
            status,
            exit_status,
            stdout: text(stdout),
            stderr: text(stderr),
            stdout_truncated: out.truncated,
            stderr_truncated: err.truncated,
        }
    }

    /// Runloop's `DevboxExecutionDetailView` (execute_sync).
    pub async fn sync_view(&self) -> ExecutionResult {
        let v = self.view(None).await;
        ExecutionResult {
            devbox_id: v.devbox_id,
            exit_status: v.exit_status,
            stdout: v.stdout,
            stderr: v.stderr,
        }
    }

    /// Output of one stream from byte `offset` (at most 1 MiB, cut on a UTF-8 boundary
    /// when more follows), and whether that is the end: the command has completed and
    /// nothing more is kept.
    pub async fn read_from(&self, which: Stream, offset: usize) -> (Vec<u8>, bool) {
        let (kept, completed) = {
            let s = lock(&self.state);
            let k = if which == Stream::Stdout {
                s.stdout
            } else {
                s.stderr
            };
            (k.len, s.status == ExecutionStatus::Completed)
        };
        let offset = (offset as u64).min(kept);
        let end = kept.min(offset + MAX_STREAM_CHUNK as u64);
        let mut data = self.read_kept(which, offset, end).await;
        if end < kept {
            data.truncate(utf8_prefix_len(&data));
        }
        let done = completed && offset + data.len() as u64 >= kept;
        (data, done)
    }

    /// A receiver that changes whenever output or status does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// The two output files of a running execution, opened on first output, and what redaction
/// holds back of each stream.
#[derive(Default)]
struct Files {
    stdout: Option<tokio::fs::File>,
    stderr: Option<tokio::fs::File>,
    redact_stdout: StreamRedactor,
    redact_stderr: StreamRedactor,
}

impl Files {
    fn redact(&mut self, which: Stream) -> &mut StreamRedactor {
        if which == Stream::Stdout {
            &mut self.redact_stdout
        } else {
            &mut self.redact_stderr
        }
    }

    async fn write(
        &mut self,
        path: &std::path::Path,
        which: Stream,
        data: &[u8],
    ) -> std::io::Result<()> {
        let slot = if which == Stream::Stdout {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        if slot.is_none() {
            // The devbox's directory exists while it is live; no parent is created here, so
            // output arriving after a shutdown has nowhere to go.
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .await?;
            *slot = Some(f);
        }
        match slot {
            // tokio writes in the background: flush so readers find what was counted.
            Some(f) => {
                f.write_all(data).await?;
                f.flush().await
            }
            None => Ok(()),
        }
    }
}

/// The length of the longest prefix of `b` that does not end inside a UTF-8 character.
fn utf8_prefix_len(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => b.len(),
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
    use super::{tail_lines, utf8_prefix_len, OutputBudget};

    #[test]
    fn last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", Some(2)), "b\nc\n");
        assert_eq!(tail_lines("a\nb", Some(1)), "b");
        assert_eq!(tail_lines("a\nb", None), "a\nb");
        assert_eq!(tail_lines("", Some(3)), "");
    }

    #[test]
    fn budget_and_utf8_cuts() {
        let b = OutputBudget::new(10);
        assert_eq!(b.take(6), 6);
        assert_eq!(b.take(6), 4);
        b.give_back(3);
        assert_eq!(b.take(6), 3);
        assert_eq!(utf8_prefix_len("aé".as_bytes()), 3);
        assert_eq!(utf8_prefix_len(&"aé".as_bytes()[..2]), 1);
        assert_eq!(utf8_prefix_len(b"a\xffb"), 3);
    }
}
