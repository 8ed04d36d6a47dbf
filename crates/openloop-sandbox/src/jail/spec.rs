//! What a jail is made of: the spec the server writes for `openloop __jail`, the host
//! accounts a jail's uids map to, the command that starts one.

use crate::seccomp::Profile;
use serde::{Deserialize, Serialize};
use std::io::{Error, Result};
use std::path::{Path, PathBuf};

/// The host uid that uid 1000 inside a jail maps to: function code and builds. It differs
/// from the devboxes' uid, so the two kinds of sandbox never share an account.
pub const FUNCTION_HOST_UID: u32 = 100_001;
/// The host uid of uid 0 inside a jail, which only the jail's own set-up code ever runs as.
pub const JAIL_ROOT_HOST_UID: u32 = 100_002;
/// The uid everything in a jail runs as.
pub const JAIL_UID: u32 = 1000;

/// The first argument that makes the `openloop` binary act as the jail launcher.
pub const JAIL_ARG: &str = "__jail";

/// One bind mount: host `src` at `dst` inside.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bind {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub writable: bool,
}

/// A size-limited tmpfs at `dst`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tmpfs {
    pub dst: PathBuf,
    pub size_bytes: u64,
    pub mode: u32,
}

/// A small read-only file the jail writes into its root (for example a seccomp program).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailFile {
    pub dst: PathBuf,
    pub contents: Vec<u8>,
}

/// The network a jail sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The host's network namespace (builds fetch packages; the SDK reaches the API).
    Host,
    /// A network namespace of its own with only a loopback interface (up).
    None,
    /// A network namespace of its own with outbound connections through slirp4netns (as
    /// for devboxes): never to the host's loopback, and by default to no private,
    /// link-local or host address ([`crate::egress`]).
    Outbound,
}

/// The seccomp profile a jail's program runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProfile {
    Sandbox,
    WarmHost,
}

impl From<SeccompProfile> for Profile {
    fn from(p: SeccompProfile) -> Profile {
        match p {
            SeccompProfile::Sandbox => Profile::Sandbox,
            SeccompProfile::WarmHost => Profile::WarmHost,
        }
    }
}

/// Everything a jail is made of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailSpec {
    pub binds: Vec<Bind>,
    pub tmpfs: Vec<Tmpfs>,
    pub files: Vec<JailFile>,
    /// The whole environment of the program; nothing of the server's is inherited.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub hostname: String,
    pub network: Network,
    /// Where [`Network::Outbound`] traffic may go (the default rules when `None`).
    #[serde(default)]
    pub egress: Option<crate::egress::EgressPolicy>,
    pub seccomp: SeccompProfile,
    /// Descriptors beyond 0, 1 and 2 that stay open (for example a control socket as 3).
    pub keep_fds: Vec<i32>,
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Host directories every Python sandbox needs, read-only at the same path. Symbolic links
/// among them (`/lib` → `usr/lib` on merged-/usr systems) are recreated as links.
pub const SYSTEM_DIRS: &[&str] = &["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"];

impl JailSpec {
    /// Read-only binds of [`SYSTEM_DIRS`] that exist on this host.
    pub fn system_binds() -> Vec<Bind> {
        SYSTEM_DIRS
            .iter()
            .filter(|d| Path::new(d).exists())
            .map(|d| Bind {
                src: PathBuf::from(d),
                dst: PathBuf::from(d),
                writable: false,
            })
            .collect()
    }

    /// The command that starts this jail through `launcher` (the `openloop` binary). The
    /// command starts with an empty environment; the caller sets stdio and may add a
    /// `pre_exec` (descriptors in `keep_fds` must be open in the child when it execs).
    pub fn command(&self, launcher: &Path) -> Result<tokio::process::Command> {
        let spec = serde_json::to_string(self).map_err(Error::other)?;
        let mut cmd = tokio::process::Command::new(launcher);
        cmd.arg(JAIL_ARG).arg(spec).env_clear();
        Ok(cmd)
    }
}
