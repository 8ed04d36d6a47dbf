//! A run's log records: batched into the store as they arrive, redacted, NUL-safe.

use crate::notify::Notifier;
use crate::ports::Redact;
use openloop_runner::LogLine;
use openloop_store::invocations::InvocationLog;
use openloop_store::Store;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Largest batch of log records stored at once, in records and in bytes.
const LOG_BATCH_RECORDS: usize = 1000;
const LOG_BATCH_BYTES: usize = 1 << 20;

/// Store a run's log records in batches as they arrive, with the run's secret values redacted.
/// The channel is bounded, so while a batch is being written the run's output waits in its
/// socket, not in the server's memory.
pub(crate) async fn write_logs(
    store: Store,
    notifier: Notifier,
    id: String,
    mut rx: mpsc::Receiver<LogLine>,
    redactor: Arc<dyn Redact>,
) {
    let mut seq = 1i64;
    let mut batch: Vec<InvocationLog> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.message.len();
        batch.push(to_log(first, redactor.as_ref()));
        while batch.len() < LOG_BATCH_RECORDS && bytes < LOG_BATCH_BYTES {
            match rx.try_recv() {
                Ok(l) => {
                    bytes += l.message.len();
                    batch.push(to_log(l, redactor.as_ref()));
                }
                Err(_) => break,
            }
        }
        if let Err(e) = store.append_invocation_logs(&id, seq, &batch).await {
            tracing::error!(invocation = %id, error = %e, "could not store log lines");
        }
        seq += batch.len() as i64;
        batch.clear();
        notifier.notify(&id);
    }
}

fn to_log(l: LogLine, redactor: &dyn Redact) -> InvocationLog {
    InvocationLog {
        seq: 0,
        ts_ms: l.ts_ms,
        stream: l.stream.to_string(),
        level: l.level,
        // PostgreSQL text cannot hold NUL; a run that prints one must not lose its batch.
        message: redactor.redact_string(l.message).replace('\0', "\u{FFFD}"),
    }
}
