//! Persistent state of an Openloop node, on SQLite (embedded default) or PostgreSQL.
//!
//! - [`db`]: connecting, pragmas and migrations.
//! - [`keys`]: API keys, stored only as SHA-256 hashes.
//! - [`deployments`]: projects, deployments and build logs.
//! - [`invocations`]: invocations and their logs.
//! - [`devboxes`]: devbox records.
//! - [`devbox_usage`]: what a devbox used, recorded as it stopped.
//! - [`nodes`]: the nodes of a cluster, their heartbeats and lease epochs, taking over a
//!   lost node's runs and devboxes, and claiming queued runs.
//! - [`function_slots`]: a cluster's per-function concurrency limit, counted in the database.
//! - [`network_policies`]: network policies (egress rules as a JSON document).
//! - [`secrets`]: secrets, sealed (the store never sees a value in clear).
//! - [`sessions`]: dashboard sign-in sessions (token hashes, tied to a live API key).
//! - [`snapshots`]: devbox disk snapshot records (their files are in the data directory).
//! - [`blueprints`]: blueprint records and build logs (their layers are in the data directory).
//! - [`repositories`]: connected git repositories (push-to-deploy) and their deliveries.
//!
//! All SQL is static text with bound parameters (`$1`, `$2`, …), portable between both
//! databases; no SQL is built by string formatting.

pub mod blueprints;
pub mod db;
pub mod deployments;
pub mod devbox_usage;
pub mod devboxes;
pub mod function_slots;
pub mod invocations;
pub mod keys;
pub mod network_policies;
pub mod nodes;
pub mod repositories;
pub mod secrets;
pub mod sessions;
pub mod snapshots;

pub use db::Store;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new random id with a readable prefix, e.g. `inv_0193...`; time-ordered.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}
