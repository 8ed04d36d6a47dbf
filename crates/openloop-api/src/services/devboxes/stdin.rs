//! The standard input of an execution started with `attach_stdin`: text goes to the command's
//! stdin pipe inside the devbox (through its agent connection), `EOF` closes it, `INTERRUPT`
//! sends SIGINT to the command's process group.
//!
//! Input that cannot be taken (no pipe, closed, the command ended) is a 400, not a 409:
//! Runloop's client retries 409s, and waiting cannot make such input go anywhere.

use crate::error::{ApiError, ApiResult};
use openloop_sandbox::{StdinInput, StdinMessage};
use openloop_sync::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot};

/// Pieces of input waiting for the agent connection's writer, per execution. A send waits
/// for its piece to be handed on, so this only bounds how many callers queue at once.
const QUEUED_INPUTS: usize = 16;

/// An execution's way to its command's standard input.
pub struct StdinPipe {
    /// `None` when the execution was started without `attach_stdin`.
    tx: Mutex<Option<mpsc::Sender<StdinMessage>>>,
    /// `EOF` was sent: no more text.
    closed: AtomicBool,
}

impl StdinPipe {
    /// The command's stdin is `/dev/null`.
    pub fn detached() -> StdinPipe {
        StdinPipe {
            tx: Mutex::new(None),
            closed: AtomicBool::new(true),
        }
    }

    /// A pipe, and the receiver the command's agent connection feeds it from.
    pub fn attached() -> (StdinPipe, mpsc::Receiver<StdinMessage>) {
        let (tx, rx) = mpsc::channel(QUEUED_INPUTS);
        (
            StdinPipe {
                tx: Mutex::new(Some(tx)),
                closed: AtomicBool::new(false),
            },
            rx,
        )
    }

    pub fn is_attached(&self) -> bool {
        lock(&self.tx).is_some()
    }

    /// Hand `input` to the command; answers once the agent connection has taken it.
    /// `execution` names the execution in errors.
    pub async fn send(&self, execution: &str, input: StdinInput) -> ApiResult<()> {
        let Some(tx) = lock(&self.tx).clone() else {
            return Err(ApiError::BadRequest(format!(
                "execution {execution} was started without attach_stdin; start the command with execute_async(..., attach_stdin=True) to send it input"
            )));
        };
        let eof = matches!(input, StdinInput::Eof);
        if matches!(input, StdinInput::Data(_)) && self.closed.load(Ordering::SeqCst) {
            return Err(ApiError::BadRequest(format!(
                "the standard input of execution {execution} was closed (EOF was sent); no more text can be sent"
            )));
        }
        if eof && self.closed.swap(true, Ordering::SeqCst) {
            // Closing twice is closing once.
            return Ok(());
        }
        let ended = || {
            ApiError::BadRequest(format!(
                "execution {execution} has completed; its standard input is gone"
            ))
        };
        let (sent, done) = oneshot::channel();
        tx.send(StdinMessage { input, sent })
            .await
            .map_err(|_| ended())?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            // The connection broke or the command ended before the input was taken.
            Ok(Err(_)) | Err(_) => Err(ended()),
        }
    }
}
