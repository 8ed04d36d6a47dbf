//! Turning a repository into a runnable deployment.
//!
//! - [`source`]: copy a local directory or clone a git URL at a ref; derive the project name.
//! - [`config`]: `runloop.toml` (`[module] path`, `name`; `[secrets]`).
//! - [`sdk`]: the `runloop` Python SDK, embedded in the binary so its version always matches.
//! - [`venv`]: one virtual environment per requirements hash, built with `uv` and cached.
//! - [`manifest`]: import the module in its environment and read the functions and schemas.
//! - [`build`]: the whole pipeline, reporting each step to a build log; and the same
//!   environment built again from a stored source archive (another node of a cluster).
//! - [`archive`]: a deployment's source as one content-addressed archive.

pub mod archive;
pub mod build;
pub mod config;
pub mod manifest;
pub mod sdk;
pub mod source;
pub mod venv;

pub use build::{build, build_from_archive, BuildOutput, BuildSandbox, BuildSettings};
pub use config::{ModuleConfig, RunloopToml};
pub use manifest::{FunctionSpec, Manifest};

/// Why a build failed; the message is what the user sees next to the build log.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("fetching the source failed: {0}")]
    Source(String),
    #[error("runloop.toml: {0}")]
    Config(String),
    #[error("building the Python environment failed: {0}")]
    Environment(String),
    #[error("{0}")]
    Manifest(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A sink for build-log lines.
pub type LogSink = tokio::sync::mpsc::UnboundedSender<String>;
