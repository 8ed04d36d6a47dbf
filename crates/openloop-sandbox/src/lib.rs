//! Devboxes: long-lived Linux sandboxes for untrusted code.
//!
//! - [`image`]: the frozen base root filesystem (Debian minbase from `debootstrap`), built once and cached.
//! - [`cgroup`]: memory and pids limits, cgroup v1 or v2.
//! - [`disk`]: each devbox's own size-limited disk, and a pool of disks formatted ahead of time;
//!   a suspended devbox keeps only its disk image, mounted again on resume.
//! - [`devbox`]: one sandbox: an overlay root over the base image, a `bwrap` process with every
//!   namespace unshared and all capabilities dropped, and the in-box agent as its first process.
//! - [`dns`]: the DNS filter that lets a policy's allowed hostnames through, and no others.
//! - [`egress`]: outbound network (slirp4netns) and the nftables rules that keep sandboxes
//!   away from private, link-local, loopback and host addresses.
//! - [`jail`]: Openloop's own namespace launcher (`openloop __jail`), for Python code.
//! - [`lasting`]: children that die with the server are started from one thread that never
//!   exits (a parent-death signal follows the forking *thread*).
//! - [`python`]: the jail a deployment's Python code runs in: its build, its manifest
//!   import, its warm process and runs.
//! - [`seccomp`]: the syscall filters every sandbox loads (no namespace creation, mounting,
//!   keyring, bpf, io_uring, kernel modules, ...), as bytes for `bwrap --seccomp` or installed
//!   in a forked child.
//! - [`pidfd`]: process handles that never signal a reaped pid's next owner.
//! - [`snapshot`]: disk snapshots: a devbox's writable layer copied (frozen) into a
//!   read-only layer that devboxes started from it share under their own upper layers.
//! - [`agent`]: the client side of the agent protocol (exec, files); each connection is
//!   handed to the agent over its control socket, never found by path.
//!
//! This crate knows nothing of the database or of HTTP.

pub mod agent;
pub mod build;
pub mod cgroup;
pub mod devbox;
pub mod disk;
pub mod dns;
pub mod egress;
pub mod image;
pub mod jail;
pub mod lasting;
pub mod pidfd;
pub mod python;
pub mod seccomp;
pub mod snapshot;

pub use agent::{ExecOutput, OutputChunk, StdinInput, StdinMessage};
pub use devbox::{Devbox, DevboxSpec, SandboxConfig, Usage};

/// Everything that can go wrong with a devbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the base image could not be built: {0}")]
    Image(String),
    #[error("the devbox could not start: {0}")]
    Start(String),
    #[error("the devbox is not running ({0})")]
    NotRunning(String),
    #[error("{message}")]
    Agent { code: String, message: String },
    #[error("lost contact with the devbox agent: {0}")]
    Io(#[from] std::io::Error),
}

/// The host uid that sandbox uid 1000 maps to. Files a devbox writes are owned by it.
pub const SANDBOX_HOST_UID: u32 = 100_000;
/// The uid inside the sandbox.
pub const SANDBOX_UID: u32 = 1000;
