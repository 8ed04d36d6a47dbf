//! `openloop serve`.

use anyhow::Context;
use clap::Args;
use openloop_api::ServerConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_IMAGE_DIR: &str = "/var/cache/openloop/images";
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Data directory (database, deployments, devboxes, admin key).
    #[arg(long, env = "OPENLOOP_DATA_DIR", default_value = "./.openloop")]
    pub data_dir: PathBuf,
    /// `postgres://…` to use PostgreSQL; default SQLite in the data directory.
    #[arg(long, env = "OPENLOOP_DATABASE_URL")]
    pub database_url: Option<String>,
}

impl StoreArgs {
    pub fn url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            openloop_store::Store::sqlite_url(&self.data_dir.join("openloop.db"))
        })
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, env = "OPENLOOP_HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[arg(long, env = "OPENLOOP_PORT", default_value_t = 8700)]
    port: u16,
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long, env = "OPENLOOP_IMAGE_DIR", default_value = DEFAULT_IMAGE_DIR)]
    image_dir: PathBuf,
    #[arg(long, env = "OPENLOOP_DEBIAN_MIRROR", default_value = DEFAULT_MIRROR)]
    debian_mirror: String,
    /// The `uv` binary (default: found on PATH, skipping shell shims).
    #[arg(long, env = "OPENLOOP_UV")]
    uv: Option<PathBuf>,
    /// Base Python interpreter for deployments.
    #[arg(long, env = "OPENLOOP_PYTHON", default_value = "/usr/bin/python3")]
    python: PathBuf,
    /// The devbox agent binary (default: beside this executable).
    #[arg(long, env = "OPENLOOP_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// Invocations running at once.
    #[arg(long, env = "OPENLOOP_MAX_CONCURRENT_RUNS", default_value_t = 256)]
    max_concurrent_runs: usize,
    /// Invocations of one function running at once (0: no per-function limit).
    #[arg(
        long,
        env = "OPENLOOP_MAX_CONCURRENT_RUNS_PER_FUNCTION",
        default_value_t = 0
    )]
    max_concurrent_runs_per_function: usize,
    /// Deepest chain of functions invoking functions (a top-level invocation is depth 0).
    #[arg(long, env = "OPENLOOP_MAX_CALL_DEPTH", default_value_t = 10)]
    max_call_depth: u32,
    /// Largest JSON request body, in bytes.
    #[arg(long, env = "OPENLOOP_BODY_LIMIT", default_value_t = 10 << 20)]
    body_limit: usize,
    /// Memory limit of one function run, in MiB.
    #[arg(long, env = "OPENLOOP_RUN_MEMORY_MB", default_value_t = 4096)]
    run_memory_mb: u64,
    /// Process limit of one function run.
    #[arg(long, env = "OPENLOOP_RUN_PIDS", default_value_t = 1024)]
    run_pids: u64,
    /// Where sandboxes resolve the hostnames a network policy allows (default: the host's
    /// first nameserver in /etc/resolv.conf), as ADDRESS:PORT.
    #[arg(long, env = "OPENLOOP_DNS_UPSTREAM")]
    dns_upstream: Option<std::net::SocketAddr>,
    /// Shortest polling interval a connected repository may ask for (`poll_seconds`), in
    /// seconds. Lower it only for tests: each poll runs `git ls-remote`.
    #[arg(long, env = "OPENLOOP_REPO_MIN_POLL_SECONDS", default_value_t = 10)]
    repo_min_poll_seconds: u64,
    /// Size of each function run's own /tmp (a tmpfs counted in the run's memory), in MiB.
    #[arg(long, env = "OPENLOOP_RUN_TMP_MB", default_value_t = 512)]
    run_tmp_mb: u64,
    /// Memory limit of a deployment's warm process (module import, request validation), in MiB;
    /// its cgroup also gets 4 MiB per concurrent run for the pages each run's process copies
    /// while it is forked there.
    #[arg(long, env = "OPENLOOP_WARM_MEMORY_MB", default_value_t = 1024)]
    warm_memory_mb: u64,
    /// Memory limit of one build (uv and package build hooks), in MiB.
    #[arg(long, env = "OPENLOOP_BUILD_MEMORY_MB", default_value_t = 4096)]
    build_memory_mb: u64,
    /// Default devbox memory limit in MiB.
    #[arg(long, default_value_t = 2048)]
    devbox_memory_mb: u64,
    /// Default devbox process limit.
    #[arg(long, default_value_t = 512)]
    devbox_pids: u64,
    /// Seconds without activity after which a devbox not created by a run is shut down.
    #[arg(long, env = "OPENLOOP_DEVBOX_IDLE_SECONDS", default_value_t = 3600)]
    devbox_idle_seconds: u64,
    /// Devbox disks kept formatted ahead of time, so creating a devbox does not wait for mkfs.
    #[arg(long, env = "OPENLOOP_DEVBOX_DISK_POOL", default_value_t = 4)]
    devbox_disk_pool: usize,
    /// Devbox sandboxes of the default shape kept started, so a create answers in milliseconds.
    #[arg(long, env = "OPENLOOP_DEVBOX_WARM_POOL", default_value_t = 2)]
    devbox_warm_pool: usize,
    /// Let the devbox user run commands as root with `sudo` (Runloop's default user may),
    /// root of the devbox's own user namespace only: confined by the devbox's sandbox.
    #[arg(long, env = "OPENLOOP_DEVBOX_SUDO")]
    devbox_sudo: bool,
    /// Live devboxes one run (invocation) may have at once.
    #[arg(long, env = "OPENLOOP_DEVBOX_MAX_PER_RUN", default_value_t = 16)]
    devbox_max_per_run: usize,
    /// Live devboxes created with one API key at once.
    #[arg(long, env = "OPENLOOP_DEVBOX_MAX_PER_KEY", default_value_t = 100)]
    devbox_max_per_key: usize,
    /// Output of devbox executions kept on disk per devbox, in MiB.
    #[arg(long, env = "OPENLOOP_DEVBOX_EXEC_OUTPUT_MB", default_value_t = 1024)]
    devbox_exec_output_mb: u64,
    /// Output (stdout, stderr, logging) of one run kept as log records, in MiB.
    #[arg(long, env = "OPENLOOP_RUN_LOG_MAX_MB", default_value_t = 128)]
    run_log_max_mb: u64,
    /// Output lines of one run kept as log records.
    #[arg(long, env = "OPENLOOP_RUN_LOG_MAX_LINES", default_value_t = 1_000_000)]
    run_log_max_lines: u64,
    /// Seconds a connection to the engine socket may take to send its header.
    #[arg(long, env = "OPENLOOP_ENGINE_HEADER_TIMEOUT", default_value_t = 5)]
    engine_header_timeout: u64,
    /// Engine socket connections waiting for their header (node-wide).
    #[arg(long, env = "OPENLOOP_ENGINE_MAX_PENDING", default_value_t = 256)]
    engine_max_pending: usize,
    /// Engine socket connections waiting for their header from one process.
    #[arg(
        long,
        env = "OPENLOOP_ENGINE_MAX_PENDING_PER_PROCESS",
        default_value_t = 16
    )]
    engine_max_pending_per_process: usize,
    /// Engine socket connections open at once (each running run holds three).
    #[arg(long, env = "OPENLOOP_ENGINE_MAX_CONNECTIONS", default_value_t = 8192)]
    engine_max_connections: usize,
    /// Seconds an HTTP client may take to send a request's header.
    #[arg(long, env = "OPENLOOP_HTTP_HEADER_TIMEOUT", default_value_t = 10)]
    http_header_timeout: u64,
    /// HTTP connections open at once (idle ones are closed to make room).
    #[arg(long, env = "OPENLOOP_HTTP_MAX_CONNECTIONS", default_value_t = 4096)]
    http_max_connections: usize,
    /// File of the key that seals secrets at rest (32 random bytes, created with mode 0600
    /// when missing; default `<data-dir>/secrets.key`). Servers sharing one database set
    /// OPENLOOP_SECRETS_KEY (base64 of 32 bytes) instead, in the environment only.
    #[arg(long, env = "OPENLOOP_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// Devbox tunnels answer at http://{port}-{tunnel_key}.tunnel.{TUNNEL_DOMAIN}:{port of
    /// this server}/ (point a wildcard DNS name, or a proxy, at the server for other domains).
    #[arg(long, env = "OPENLOOP_TUNNEL_DOMAIN", default_value = "localhost", value_parser = parse_tunnel_domain)]
    tunnel_domain: String,
    /// This node's id in a cluster (default: made on the first start and kept in
    /// `<data-dir>/node-id`). Each node of a cluster has its own data directory and id.
    #[arg(long, env = "OPENLOOP_NODE_ID")]
    node_id: Option<String>,
    /// The URL the other nodes of a cluster reach this node's API at (default
    /// `http://{host}:{port}`; set it when listening on 0.0.0.0).
    #[arg(long, env = "OPENLOOP_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Seconds a node of a cluster may miss heartbeats before another node takes over its
    /// runs and marks its devboxes lost.
    #[arg(long, env = "OPENLOOP_NODE_LEASE_SECONDS", default_value_t = 15)]
    node_lease_seconds: u64,
    /// On PostgreSQL, an `invoke_sync` run's record waits for the disk before the run starts.
    /// By default it reaches the disk with the run's outcome, before its caller is answered;
    /// until then a crash of PostgreSQL or its machine (not of Openloop) may lose the record
    /// of the run in flight, and its caller gets an error.
    #[arg(long, env = "OPENLOOP_POSTGRES_FLUSH_RUN_START")]
    postgres_flush_run_start: bool,
}

/// A domain name: labels of letters, digits and hyphens, separated by dots.
fn parse_tunnel_domain(s: &str) -> Result<String, String> {
    let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 200
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(d)
    } else {
        Err(format!(
            "'{s}' is not a domain name (like `localhost` or `example.com`)"
        ))
    }
}

/// `OPENLOOP_SECRETS_KEY`, taken out of the process environment at start-up.
static SECRETS_KEY_ENV: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Read `OPENLOOP_SECRETS_KEY` and remove it from the environment, so that no process the
/// server starts inherits it. Call before any thread exists.
pub fn take_secrets_key_env() {
    let key = std::env::var("OPENLOOP_SECRETS_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty());
    std::env::remove_var("OPENLOOP_SECRETS_KEY");
    let _ = SECRETS_KEY_ENV.set(key);
}

fn secrets_key_source(
    file: Option<PathBuf>,
    data_dir: &Path,
) -> anyhow::Result<openloop_api::config::SecretsKeySource> {
    use openloop_api::config::SecretsKeySource;
    let env = SECRETS_KEY_ENV.get().cloned().flatten();
    Ok(match (env, file) {
        (Some(_), Some(f)) => anyhow::bail!(
            "both OPENLOOP_SECRETS_KEY and --secrets-key-file {} are set; give the secrets key one way",
            f.display()
        ),
        (Some(k), None) => SecretsKeySource::Base64(k),
        (None, Some(f)) => SecretsKeySource::File(std::path::absolute(f)?),
        (None, None) => SecretsKeySource::File(data_dir.join("secrets.key")),
    })
}

/// Find a real executable named `name` on PATH, skipping pyenv-style shims.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() && !dir.to_string_lossy().contains("shims") {
            return Some(candidate.canonicalize().unwrap_or(candidate));
        }
    }
    None
}

fn agent_beside_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the openloop executable")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let agent = dir.join("openloop-devbox-agent");
    anyhow::ensure!(
        agent.is_file(),
        "openloop-devbox-agent not found beside {} (build the whole workspace with `cargo build --release`, or pass --agent-bin)",
        exe.display()
    );
    Ok(agent)
}

/// Many runs at once hold three sockets each: lift the open-files limit to the hard maximum.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    raise_open_files_limit();
    let uv = match args.uv {
        Some(u) => u,
        None => find_on_path("uv")
            .context("uv not found on PATH: install it with `pip install uv`, or pass --uv")?,
    };
    let agent_bin = match args.agent_bin {
        Some(a) => a,
        None => agent_beside_exe()?,
    };
    let data_dir = std::path::absolute(&args.store.data_dir).context("data directory")?;
    // An interpreter outside the system directories is bound into every Python sandbox
    // (`python::interpreter_prefixes`): its installation must not hold the data directory.
    for prefix in openloop_sandbox::python::interpreter_prefixes(&args.python) {
        if prefix.starts_with("/tmp") {
            anyhow::bail!(
                "the Python interpreter {} is installed under /tmp ({}), which no sandbox can \
                 see (each has a /tmp of its own); install it elsewhere and pass --python",
                args.python.display(),
                prefix.display()
            );
        }
        let data = data_dir.canonicalize().unwrap_or_else(|_| data_dir.clone());
        if data.starts_with(&prefix) || data_dir.starts_with(&prefix) {
            anyhow::bail!(
                "the Python interpreter {} is installed in {}, which holds the data directory {}: \
                 every function's sandbox sees the interpreter's installation, so it would see \
                 the data directory too; use an interpreter installed elsewhere (--python) or \
                 another data directory (--data-dir)",
                args.python.display(),
                prefix.display(),
                data_dir.display()
            );
        }
    }
    let secrets_key = secrets_key_source(args.secrets_key_file, &data_dir)?;
    let node_id = match args.node_id {
        Some(id) => id,
        None => openloop_api::config::node_id_in(&data_dir).context("node id")?,
    };
    let listen = std::net::SocketAddr::new(args.host, args.port);
    let config = ServerConfig {
        node_id,
        advertise_url: args
            .advertise_url
            .unwrap_or_else(|| format!("http://{listen}")),
        node_lease: Duration::from_secs(args.node_lease_seconds.max(1)),
        flush_run_start: args.postgres_flush_run_start,
        listen,
        database_url: args.store.url(),
        data_dir,
        image_dir: args.image_dir,
        debian_mirror: args.debian_mirror,
        uv,
        python: args.python,
        agent_bin,
        launcher: std::env::current_exe().context("locating the openloop binary")?,
        dns_upstream: args.dns_upstream,
        repo_min_poll_seconds: args.repo_min_poll_seconds.max(1),
        warm_memory_mb: args.warm_memory_mb,
        run_tmp_mb: args.run_tmp_mb,
        build_memory_mb: args.build_memory_mb,
        max_concurrent_runs: args.max_concurrent_runs,
        max_concurrent_runs_per_function: args.max_concurrent_runs_per_function,
        max_call_depth: args.max_call_depth,
        body_limit: args.body_limit,
        run_memory_mb: args.run_memory_mb,
        run_pids: args.run_pids,
        devbox_memory_mb: args.devbox_memory_mb,
        devbox_pids: args.devbox_pids,
        devbox_idle_seconds: args.devbox_idle_seconds,
        devbox_disk_pool: args.devbox_disk_pool,
        devbox_warm_pool: args.devbox_warm_pool,
        devbox_sudo: args.devbox_sudo,
        engine: openloop_api::config::EngineLimits {
            header_timeout: Duration::from_secs(args.engine_header_timeout),
            max_pending: args.engine_max_pending,
            max_pending_per_process: args.engine_max_pending_per_process,
            max_connections: args.engine_max_connections,
        },
        run_logs: openloop_api::config::LogLimits {
            max_bytes: args.run_log_max_mb << 20,
            max_lines: args.run_log_max_lines,
        },
        http_header_timeout: Duration::from_secs(args.http_header_timeout),
        http_max_connections: args.http_max_connections,
        devbox_exec_output_bytes: args.devbox_exec_output_mb << 20,
        devbox_max_per_run: args.devbox_max_per_run,
        devbox_max_per_key: args.devbox_max_per_key,
        secrets_key,
        tunnel_domain: args.tunnel_domain,
    };
    let (store, admin) = openloop_api::prepare(&config).await?;
    if let Some(secret) = admin {
        println!(
            "Created the admin API key (shown once; also saved to {}):",
            config.data_dir.join("admin-key").display()
        );
        println!("{secret}");
    }
    println!("Openloop listening on http://{}", config.listen);
    println!(
        "Dashboard: http://{}/ui/ (sign in with an API key)",
        config.listen
    );
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    openloop_api::serve(config, store, Some(openloop_dashboard::router), shutdown).await?;
    Ok(())
}
