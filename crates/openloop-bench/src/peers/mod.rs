//! Peer columns: the same echo call through Celery and through a bare FastAPI app, measured in
//! the same run as Openloop's figures, so their ratios mean something on a noisy machine.
//!
//! - Celery: a Redis the benchmark starts (loopback, free port, no persistence, its own temp
//!   dir) as broker and result backend, and a worker with `--concurrency 2 --pool prefork`
//!   running `echo(text)`. The client is `peers/celery_driver.py` (`echo.delay(text).get()`),
//!   which prints every latency and a throughput count as JSON.
//! - FastAPI: `POST /echo` returning its JSON body, under uvicorn (one worker, no access log),
//!   called from Rust with the same reqwest client and loops as Openloop's own figures.
//!
//! The Python packages (`peers/requirements.txt`, every version pinned) go into a venv the
//! benchmark makes with uv next to its own binary (`<target>/bench-peers-venv`), reused once
//! complete. Every process is started in its own process group and stopped with its group when
//! its guard drops, on success or error; its temp dir goes with it. A peer that cannot start
//! fails the benchmark, with its log.
//!
//! This module holds what the peers share (the figures a column holds, the warm-up count); the
//! jobs live in its submodules: `env` (the peers' venv and tools), `proc` (peer processes and
//! their groups), `celery` and `fastapi` (one peer each), `report` (the comparison table and
//! targets).

mod celery;
mod env;
mod fastapi;
mod proc;
mod report;

pub use celery::celery;
pub use env::{prepare, Env};
pub use fastapi::fastapi;
pub use report::report;

/// Calls made before the timed ones, by every peer (Openloop's warm figures follow its cold
/// first call).
const WARMUP_CALLS: usize = 100;

/// The three figures each column of the comparison holds.
#[derive(Clone, Copy, Debug)]
pub struct CallFigures {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub per_s: f64,
}
