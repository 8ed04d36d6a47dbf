//! Server configuration, read once at start-up.

pub use openloop_runner::{EngineLimits, LogLimits};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `sqlite://…` (default: `<data_dir>/openloop.db`) or `postgres://…`.
    pub database_url: String,
    /// Where devbox base images are cached (shared between data dirs).
    pub image_dir: PathBuf,
    pub debian_mirror: String,
    /// The `uv` binary used to build environments.
    pub uv: PathBuf,
    /// The base interpreter for environments, by its real path.
    pub python: PathBuf,
    /// The `openloop-devbox-agent` binary.
    pub agent_bin: PathBuf,
    /// Where sandboxes' allowed hostnames are resolved (`None`: the host's first resolver).
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// Shortest `poll_seconds` a repository connection may ask for (push-to-deploy polling).
    pub repo_min_poll_seconds: u64,
    /// The `openloop` binary itself, which launches the jails Python code runs in
    /// (`openloop __jail`).
    pub launcher: PathBuf,
    /// Memory limit of a deployment's warm process (its import, request validation and the
    /// spare process of the next run), in MiB.
    pub warm_memory_mb: u64,
    /// Size of each run's own `/tmp` (a tmpfs that counts against the run's memory), in MiB.
    pub run_tmp_mb: u64,
    /// Memory limit of a build (`uv` and the package build hooks it runs), in MiB.
    pub build_memory_mb: u64,
    /// Invocations running at once on this node.
    pub max_concurrent_runs: usize,
    /// Invocations of one function running at once (0: only the node's limit applies).
    pub max_concurrent_runs_per_function: usize,
    /// Deepest chain of nested calls: a top-level invocation is at depth 0, a function it
    /// invokes at depth 1, and so on; invoking past this fails with `call_depth_exceeded`.
    pub max_call_depth: u32,
    /// Memory limit of one run (its process and everything it starts), in MiB.
    pub run_memory_mb: u64,
    /// Process limit of one run.
    pub run_pids: u64,
    /// Largest JSON request body.
    pub body_limit: usize,
    /// Default devbox limits.
    pub devbox_memory_mb: u64,
    pub devbox_pids: u64,
    /// Devboxes not created by a run shut down after this long without activity
    /// (Runloop's `keep_alive_time_seconds` default).
    pub devbox_idle_seconds: u64,
    /// Devbox disks of the default size kept formatted ahead of time (0: none).
    pub devbox_disk_pool: usize,
    /// Sandboxes of the default shape kept started ahead of time (0: none).
    pub devbox_warm_pool: usize,
    /// The devbox user may `sudo` (root of the devbox's own user namespace, as a root
    /// devbox's; see `openloop_sandbox::build` and the agent's `sudo`).
    pub devbox_sudo: bool,
    /// The engine socket: header deadline, connections without a header (node-wide and per
    /// process), connections overall.
    pub engine: EngineLimits,
    /// Output of one run kept as log records (bytes and lines); the rest is counted and dropped.
    pub run_logs: LogLimits,
    /// HTTP: a connection's request header must arrive within this time.
    pub http_header_timeout: Duration,
    /// HTTP: connections open at once; past it an idle one is closed to make room, or the new
    /// one when none is idle.
    pub http_max_connections: usize,
    /// Bytes of finished and running executions' output kept on disk per devbox.
    pub devbox_exec_output_bytes: u64,
    /// Live devboxes one run may have at once.
    pub devbox_max_per_run: usize,
    /// Live devboxes created with one API key at once.
    pub devbox_max_per_key: usize,
    /// The key that seals secrets at rest.
    pub secrets_key: SecretsKeySource,
    /// Tunnels answer at `{port}-{tunnel_key}.tunnel.{tunnel_domain}` (default `localhost`).
    pub tunnel_domain: String,
    /// This node's id, stable across restarts (see [`node_id_in`]).
    pub node_id: String,
    /// Where the other nodes of a cluster reach this one (default `http://{listen}`).
    pub advertise_url: String,
    /// How long a node may miss heartbeats before another takes over its work.
    pub node_lease: Duration,
    /// On PostgreSQL, an `invoke_sync` run's record waits for the disk before the run starts
    /// (`--postgres-flush-run-start`; see `openloop_engine::Reply`).
    pub flush_run_start: bool,
}

/// The node id kept in `data_dir/node-id`, made on the first start.
pub fn node_id_in(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            std::fs::create_dir_all(data_dir)?;
            let id = openloop_store::new_id("node");
            std::fs::write(&path, format!("{id}\n"))?;
            Ok(id)
        }
    }
}

/// Where the key that seals secrets comes from. Its `Debug` never shows a key.
#[derive(Clone)]
pub enum SecretsKeySource {
    /// A file of 32 random bytes (or their base64), created with mode 0600 when missing;
    /// by default `<data-dir>/secrets.key`.
    File(PathBuf),
    /// The key itself in base64 (`OPENLOOP_SECRETS_KEY`), for servers sharing one database.
    Base64(String),
}

impl std::fmt::Debug for SecretsKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretsKeySource::File(p) => f.debug_tuple("File").field(p).finish(),
            SecretsKeySource::Base64(_) => f.write_str("Base64(..)"),
        }
    }
}

impl ServerConfig {
    /// The run engine's part of the configuration.
    pub fn engine(&self) -> openloop_engine::EngineConfig {
        openloop_engine::EngineConfig {
            run_dir: self.run_dir(),
            api_socket: self.api_socket(),
            launcher: self.launcher.clone(),
            instance_tag: self.instance_tag(),
            engine: self.engine,
            max_concurrent_runs: self.max_concurrent_runs,
            max_concurrent_runs_per_function: self.max_concurrent_runs_per_function,
            max_call_depth: self.max_call_depth,
            flush_run_start: self.flush_run_start,
            run_memory_mb: self.run_memory_mb,
            run_pids: self.run_pids,
            run_tmp_mb: self.run_tmp_mb,
            warm_memory_mb: self.warm_memory_mb,
            run_logs: self.run_logs,
            node: openloop_engine::NodeConfig {
                id: self.node_id.clone(),
                address: self.advertise_url.clone(),
                lease: self.node_lease,
                cluster_database_url: self.is_cluster().then(|| self.database_url.clone()),
            },
        }
    }

    /// What this node recovers at its start: in a cluster its own records only (the other
    /// nodes' are theirs, or taken over when they are lost); alone on SQLite, every record,
    /// whatever node id it was written under.
    pub fn scope(&self) -> Option<&str> {
        self.is_cluster().then_some(self.node_id.as_str())
    }

    /// Whether this server is a node of a cluster: its database is PostgreSQL, which other
    /// nodes may share. (On SQLite a server is always alone.)
    pub fn is_cluster(&self) -> bool {
        self.database_url.starts_with("postgres:") || self.database_url.starts_with("postgresql:")
    }

    pub fn devbox_dir(&self) -> PathBuf {
        self.data_dir.join("devboxes")
    }
    pub fn deployments_dir(&self) -> PathBuf {
        self.data_dir.join("deployments")
    }
    pub fn venv_dir(&self) -> PathBuf {
        self.data_dir.join("venvs")
    }
    /// The read-only layer that puts the agent into every devbox.
    pub fn agent_layer_dir(&self) -> PathBuf {
        self.data_dir.join("agent-layer")
    }
    /// The API's Unix socket (beside the engine socket), bound into function sandboxes.
    pub fn api_socket(&self) -> PathBuf {
        self.run_dir().join("api.sock")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
    /// Devbox executions' output files, one directory per devbox (root-only, never mounted).
    pub fn exec_output_dir(&self) -> PathBuf {
        self.data_dir.join("exec-output")
    }
    /// A short tag naming this instance's cgroups, so that several servers on one host (each
    /// with its own data directory) never clean up each other's.
    pub fn instance_tag(&self) -> String {
        instance_tag_of(&self.data_dir)
    }
}

/// The instance tag of a server on `data_dir` ([`ServerConfig::instance_tag`]): FNV-1a of
/// the directory's path.
pub fn instance_tag_of(data_dir: &std::path::Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}
