//! Start-up and the HTTP listener.

use crate::auth::Tokens;
use crate::config::ServerConfig;
use crate::notify::Notifier;
use crate::routes::router;
use crate::services::network_policies::NetworkPolicies;
use crate::services::repositories::Repositories;
use crate::services::secrets::{SecretKey, SecretKeyError, Secrets};
use crate::services::{deployments::Deployments, devboxes::Devboxes, invocations::Invocations};
use crate::state::AppState;
use openloop_store::Store;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot prepare the data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error(transparent)]
    Store(#[from] openloop_store::StoreError),
    #[error(transparent)]
    Api(#[from] crate::error::ApiError),
    #[error("cannot listen on {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    SecretsKey(#[from] SecretKeyError),
}

/// Open the data directory and the database, creating the admin key on first start.
/// Returns the store and, the first time only, the new admin key's secret.
pub async fn prepare(config: &ServerConfig) -> Result<(Store, Option<String>), ServeError> {
    let dd = &config.data_dir;
    std::fs::create_dir_all(dd).map_err(|e| ServeError::DataDir(dd.display().to_string(), e))?;
    // Traversable (devbox mounts live below it) but not listable; the files in it are private.
    std::fs::set_permissions(dd, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| ServeError::DataDir(dd.display().to_string(), e))?;
    let store = Store::connect(&config.database_url).await?;
    if store.is_sqlite() {
        for f in ["openloop.db", "openloop.db-wal", "openloop.db-shm"] {
            let _ = std::fs::set_permissions(dd.join(f), std::fs::Permissions::from_mode(0o600));
        }
    }
    let mut admin = None;
    if store.count_keys().await? == 0 {
        let (_, secret) = store.create_key("admin").await?;
        let path = dd.join("admin-key");
        write_private(&path, &format!("{secret}\n"))?;
        admin = Some(secret);
    }
    Ok((store, admin))
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// How long open requests may take to finish once the server is asked to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Routes served beside the API on the TCP listener only (the dashboard): made from the
/// server's state. Function code, on the Unix socket, never reaches them.
pub type ExtraRoutes = fn(AppState) -> axum::Router;

/// Run the server until `shutdown` resolves.
pub async fn serve(
    config: ServerConfig,
    store: Store,
    extra: Option<ExtraRoutes>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let secrets = Arc::new(Secrets::new(
        store.clone(),
        SecretKey::load(&config.secrets_key)?,
    ));
    secrets.check_key().await?;
    let network_policies = Arc::new(NetworkPolicies::new(store.clone(), config.dns_upstream));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError::Bind(config.listen, e))?;
    let notifier = Notifier::default();
    let tokens = Tokens::default();
    let devboxes = Devboxes::new(
        store.clone(),
        config.clone(),
        notifier.clone(),
        secrets.clone(),
        network_policies.clone(),
    );
    devboxes.recover().await?;
    devboxes.start_warm_pool();
    let invocations = Arc::new(
        Invocations::new(
            store.clone(),
            config.engine(),
            notifier.clone(),
            openloop_engine::ports::Collaborators {
                tokens: Arc::new(tokens.clone()),
                devboxes: devboxes.clone(),
                secrets: secrets.clone(),
                network_policies: network_policies.clone(),
                builds: Arc::new(crate::services::ports::LocalBuilds {
                    store: store.clone(),
                    config: config.clone(),
                }),
            },
        )
        .await?,
    );
    let deployments = Arc::new(Deployments::new(
        store.clone(),
        config.clone(),
        notifier.clone(),
        invocations.clone(),
        secrets.clone(),
    ));
    deployments.recover().await?;
    let repositories = Arc::new(Repositories::new(
        store.clone(),
        config.clone(),
        deployments.clone(),
        secrets.clone(),
    ));
    repositories.start_pollers().await?;
    let state = AppState {
        config: config.clone(),
        store: store.clone(),
        notifier,
        tokens,
        devboxes: devboxes.clone(),
        invocations: invocations.clone(),
        deployments,
        secrets,
        network_policies,
        repositories,
    };
    // Warm processes for every live deployment, then the queue left by a previous process
    // (read now, before any request can add a run of this process's own).
    let leftovers = invocations
        .leftovers()
        .await
        .map_err(crate::error::ApiError::from)?;
    let warm = invocations.clone();
    tokio::spawn(async move {
        warm.warm_up().await;
        if let Err(e) = warm.recover(leftovers).await {
            tracing::error!(error = %e, "could not recover invocations");
        }
    });
    // Heartbeats; in a cluster, the shared queue, the bus and the watch for lost nodes.
    invocations.join();
    // Build the devbox base image in the background so the first devbox does not wait for it.
    let image = devboxes.clone();
    tokio::spawn(async move {
        if let Err(e) = image.base_image().await {
            tracing::error!(error = %e, "devbox base image unavailable");
        }
    });
    tracing::info!(addr = %config.listen, data_dir = %config.data_dir.display(), "openloop listening");
    // On the stop signal, open requests (a long invoke_sync, a followed log stream) get a few
    // seconds to end; the server does not wait on them forever. Runs cut short this way are
    // handled at the next start like after a crash.
    let limits = crate::listener::HttpLimits {
        header_timeout: config.http_header_timeout,
        max_connections: config.http_max_connections,
    };
    // The same API on a Unix socket, for function code: its sandbox has a network namespace
    // of its own and reaches the server only through this socket, bound into it.
    let api_socket = config.api_socket();
    let _ = std::fs::remove_file(&api_socket);
    let unix = tokio::net::UnixListener::bind(&api_socket)?;
    std::fs::set_permissions(&api_socket, std::fs::Permissions::from_mode(0o666))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let app = router(state.clone());
    let tcp_app = match extra {
        Some(make) => make(state.clone()).merge(app.clone()),
        None => app.clone(),
    };
    // Tunnel host names (`{port}-{key}.tunnel.{domain}`) are served before any route, on TCP only.
    let tcp_app = crate::routes::tunnel_proxy::in_front(state, tcp_app);
    let unix_server = tokio::spawn(crate::listener::serve(
        unix,
        app,
        limits,
        stopped(),
        SHUTDOWN_GRACE,
    ));
    let tcp_stop = stopped();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    crate::listener::serve(listener, tcp_app, limits, tcp_stop, SHUTDOWN_GRACE).await;
    let _ = unix_server.await;
    devboxes.shutdown_all().await;
    invocations.leave().await;
    invocations.release_cgroups().await;
    Ok(())
}
