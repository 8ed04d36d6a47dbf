//! `openloop`: the server and its command-line client.
//!
//! - `serve`: run the server ([`serve`]).
//! - `deploy`, `logs`, `nodes`: talk to a server over HTTP ([`client`]).
//! - `keys`: manage API keys directly in the database ([`keys`]).
//! - `repos`: connect git repositories for push-to-deploy, over HTTP ([`repos`]).
//! - `image build`: build the devbox base image ahead of time.
//! - `__jail SPEC` (internal): the launcher of the sandboxes Python code runs in
//!   ([`openloop_sandbox::jail`]); handled before anything else starts, since it forks.

mod client;
mod keys;
mod repos;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "openloop", version, about = "A self-hostable agent runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    Serve(Box<serve::ServeArgs>),
    /// Deploy a repository (a local directory or a git URL) and follow its build.
    Deploy(client::DeployArgs),
    /// Print an invocation's logs.
    Logs(client::LogsArgs),
    /// List the nodes of the cluster: heartbeats, lease epochs, runs and devboxes on each.
    Nodes(client::NodesArgs),
    /// Manage API keys (works on the database directly; the server need not run).
    Keys(keys::KeysArgs),
    /// Push-to-deploy: connect git repositories whose pushes deploy a project.
    Repos(repos::ReposArgs),
    /// Devbox base image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build (or verify) the cached devbox base image.
    Build {
        #[arg(long, env = "OPENLOOP_IMAGE_DIR", default_value = serve::DEFAULT_IMAGE_DIR)]
        image_dir: std::path::PathBuf,
        #[arg(long, env = "OPENLOOP_DEBIAN_MIRROR", default_value = serve::DEFAULT_MIRROR)]
        debian_mirror: String,
    },
}

fn main() {
    // The jail launcher must run before any thread exists (it forks and unshares).
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new(openloop_sandbox::jail::JAIL_ARG)) {
        let spec = args.next().unwrap_or_default();
        openloop_sandbox::jail::main(&spec.to_string_lossy());
    }
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("serve")) {
        // The server's own mounts (devbox roots and disks, the engine socket's directory)
        // stay private to it and vanish with it. Needs root, like devboxes.
        if let Err(e) = openloop_sandbox::jail::private_mounts() {
            eprintln!("warning: no private mount namespace ({e}); run as root for sandboxes");
        }
        // Out of the environment before any thread exists, so no child process inherits it.
        serve::take_secrets_key_env();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(run());
}

async fn run() {
    let cli = Cli::parse();
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        let logs = tracing_subscriber::EnvFilter::try_from_env("OPENLOOP_LOG")
            .unwrap_or_else(|_| "info,sqlx=warn".into());
        // The log output follows OPENLOOP_LOG; stage timing sees its spans whatever the level.
        let stages = tracing_subscriber::filter::Targets::new()
            .with_target(openloop_api::stages::TARGET, tracing::Level::TRACE);
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(logs),
            )
            .with(openloop_api::stages::StageLayer.with_filter(stages))
            .init();
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Deploy(args) => client::deploy(args).await,
        Command::Logs(args) => client::logs(args).await,
        Command::Nodes(args) => client::nodes(args).await,
        Command::Keys(args) => keys::run(args).await,
        Command::Repos(args) => repos::run(args).await,
        Command::Image {
            command:
                ImageCommand::Build {
                    image_dir,
                    debian_mirror,
                },
        } => openloop_sandbox::image::ensure_base_image(&image_dir, &debian_mirror)
            .await
            .map(|p| println!("devbox base image ready at {}", p.display()))
            .map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
