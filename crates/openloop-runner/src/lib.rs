//! Running functions.
//!
//! - [`host`]: the warm Python process of one deployment (`python -m runloop._host`). It has
//!   imported the module once; it validates requests and forks one child per invocation.
//! - [`channels`]: the engine socket. Each child connects its `control`, `stdout` and `stderr`
//!   streams here; results travel as length-prefixed JSON on `control`, so nothing the
//!   function prints can be taken for its result.
//! - [`spares`]: the processes a warm process isolated ahead of its next runs, each moved
//!   into a run cgroup and with its streams connected before its run comes.
//! - [`recycle`]: run cgroups emptied by earlier runs, kept for the next spares.
//! - [`run`]: following one invocation from fork to outcome.
//! - [`output`]: a run's output streams and control frames, turned into log records within
//!   its caps, and its result.
//!
//! This crate knows nothing of the database or of HTTP.

pub mod channels;
pub mod host;
pub mod output;
mod recycle;
pub mod run;
pub mod spares;

pub use channels::{Channels, EngineLimits};
pub use host::{FieldError, HostSpec, WarmHost};
pub use run::{LogLimits, LogLine, RunOutcome, RunRequest};

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("the deployment's Python process could not start: {0}")]
    Spawn(String),
    #[error("the deployment's Python process stopped: {0}")]
    HostDied(String),
    #[error("{0}")]
    Protocol(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
