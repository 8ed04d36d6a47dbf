//! The run engine: everything between "invoke this function with this request" and its
//! recorded outcome.
//!
//! # Layout
//!
//! - [`invocations`]: the [`Invocations`] service, its state, and looking invocations up;
//! - `admission`: checking and recording a new invocation (its deployment, function, call
//!   depth and request schema), then queueing it;
//! - `lifecycle`: one run from its slots to its recorded outcome (token, secrets, cgroup,
//!   the warm process's hand-off, logs, devboxes, finish);
//! - `cancel`: canceling a run and what it started; waiting for one to finish;
//! - `recovery`: after a restart, runs cut short are failed or queued again, queued ones run;
//! - `registry`: each deployment's warm process, started on demand in its jail, and the
//!   deployments' parsed manifests;
//! - [`slots`]: the node's and each function's concurrency limits, lent while a run waits;
//! - `logs`: a run's log records, batched into the store, redacted;
//! - [`notify`]: "something about X changed", which waiting requests and live pages follow;
//! - [`ports`]: what the engine needs from the rest of the server (run tokens, a run's
//!   devboxes, secrets, network policies), as narrow traits the API implements;
//! - [`stage`]: the spans that time each stage of an invocation's path;
//! - [`node`]: this node's identity and lease epoch, which every run it takes records;
//! - `cluster` (PostgreSQL only): the heartbeat and the taking over of lost nodes
//!   (`cluster::lease`), the shared queue (`cluster::queue`), and the bus that carries
//!   notifications and cancels between nodes (`cluster::bus`).
//!
//! The engine knows nothing of HTTP: `openloop-api` turns requests into calls here and
//! [`EngineError`]s into responses.

mod admission;
mod cancel;
mod cluster;
pub mod invocations;
mod lifecycle;
mod logs;
pub mod node;
pub mod notify;
pub mod ports;
mod recovery;
mod registry;
pub mod slots;
pub mod stage;

pub use admission::Reply;
pub use invocations::{manifest_of, Invocations, Loaded};
pub use node::NodeConfig;

use openloop_runner::{EngineLimits, LogLimits};
use openloop_store::StoreError;
use std::path::PathBuf;

/// What the engine is configured with (a part of the server's configuration).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where the engine socket is bound (and the API socket beside it).
    pub run_dir: PathBuf,
    /// The API's Unix socket, bound into function sandboxes.
    pub api_socket: PathBuf,
    /// The `openloop` binary, which launches the jails Python code runs in.
    pub launcher: PathBuf,
    /// Names this server's cgroups (see `ServerConfig::instance_tag`).
    pub instance_tag: String,
    /// The engine socket's limits.
    pub engine: EngineLimits,
    /// Invocations running at once on this node.
    pub max_concurrent_runs: usize,
    /// Invocations of one function running at once (0: only the node's limit applies).
    pub max_concurrent_runs_per_function: usize,
    /// Deepest chain of nested calls.
    pub max_call_depth: u32,
    /// On PostgreSQL, an `invoke_sync` run's record waits for the disk before the run starts
    /// ([`Reply::Finished`] is committed as [`Reply::Recorded`] is).
    pub flush_run_start: bool,
    /// Memory limit of one run, in MiB.
    pub run_memory_mb: u64,
    /// Process limit of one run.
    pub run_pids: u64,
    /// Size of each run's own `/tmp`, in MiB.
    pub run_tmp_mb: u64,
    /// Memory limit of a deployment's warm process, in MiB.
    pub warm_memory_mb: u64,
    /// Output of one run kept as log records.
    pub run_logs: LogLimits,
    /// This node: its id, address, lease, and whether it is part of a cluster.
    pub node: NodeConfig,
}

/// Why the engine refused or could not do something. `openloop-api` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    /// The request does not match the function's schema.
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    Conflict(String),
    /// A run invoked a function past the node's call-depth limit.
    #[error("call depth limit exceeded: {target} would run at call depth {depth}; the limit is {limit} (`openloop serve --max-call-depth`)")]
    CallDepthExceeded {
        /// `project/function` that was invoked.
        target: String,
        depth: u32,
        limit: u32,
    },
    /// A warm process could not start or answer, or the server is stopping.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An error of a collaborator behind [`ports`] (secrets, network policies, devboxes),
    /// passed through unchanged so that its own mapping to a response applies.
    #[error(transparent)]
    Port(Box<dyn std::error::Error + Send + Sync>),
}

pub type EngineResult<T> = Result<T, EngineError>;
