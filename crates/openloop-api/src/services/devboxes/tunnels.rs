//! Tunnels: HTTP to a port inside a devbox, addressed by host name.
//!
//! A devbox has at most one tunnel, named by a random 128-bit key; a request for
//! `{port}-{key}.tunnel.{domain}` reaches `127.0.0.1:{port}` inside the devbox through a
//! connection its agent makes there (never over IP: a devbox may have no network, and its
//! loopback is its own). Tunnels live in memory with their devbox (devboxes do not survive a
//! restart), so removing one, or stopping its devbox, makes its URL unknown at once (and cuts
//! what still streams through it). The
//! token of an `authenticated` tunnel is compared in constant time (`routes::tunnel_proxy`
//! does the HTTP side).

use super::*;
use crate::model::{TunnelAuthMode, TunnelView};
use sha2::{Digest, Sha256};

/// How a tunnel is asked for (`enable_tunnel`'s body, or `tunnel` when creating a devbox).
#[derive(Debug, Default, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct TunnelConfig {
    /// `open` (default: anyone with the URL) or `authenticated` (requests must carry
    /// `X-Runloop-Tunnel-Authorization: Bearer {auth_token}`).
    #[serde(default)]
    pub auth_mode: Option<TunnelAuthMode>,
    /// Requests through the tunnel reset the devbox's idle timer (default true).
    #[serde(default)]
    pub http_keep_alive: Option<bool>,
    /// A request through the tunnel resumes the devbox when it is suspended (default false).
    #[serde(default)]
    pub wake_on_http: Option<bool>,
}

impl TunnelConfig {
    /// Refuse what Openloop does not do, before anything is created (everything the client
    /// can send is done today; kept as the one place to check a tunnel request).
    pub fn check(&self) -> ApiResult<()> {
        Ok(())
    }
}

/// After a wake, how long a port that refuses connections is tried again (the devbox's
/// entrypoint and launch commands are starting its servers again).
const WAKE_PORT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);
/// How long a wake waits for the devbox to be running.
const WAKE_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// A devbox's tunnel.
pub struct Tunnel {
    pub devbox_id: String,
    pub view: TunnelView,
    /// SHA-256 of the token of an `authenticated` tunnel.
    token_hash: Option<[u8; 32]>,
    /// Set when the tunnel is removed (or its devbox stops): what is still streaming through
    /// it (a response body, a WebSocket) is cut.
    removed: tokio::sync::watch::Sender<bool>,
}

impl Tunnel {
    /// Resolves once the tunnel has been removed.
    pub fn removed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.removed.subscribe();
        async move {
            let _ = rx.wait_for(|r| *r).await;
        }
    }

    /// Whether a request carrying `token` (the bearer value, if any) may pass.
    pub fn admits(&self, token: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        match (&self.token_hash, token) {
            (None, _) => true,
            (Some(want), Some(got)) => {
                let got: [u8; 32] = Sha256::digest(got.as_bytes()).into();
                bool::from(want.ct_eq(&got))
            }
            (Some(_), None) => false,
        }
    }
}

/// Every live tunnel, by key and by devbox.
#[derive(Default)]
pub struct TunnelTable {
    inner: Mutex<TunnelMaps>,
}

#[derive(Default)]
struct TunnelMaps {
    by_key: HashMap<String, Arc<Tunnel>>,
    by_devbox: HashMap<String, Arc<Tunnel>>,
}

impl TunnelTable {
    pub fn by_key(&self, key: &str) -> Option<Arc<Tunnel>> {
        lock(&self.inner).by_key.get(key).cloned()
    }

    fn of_devbox(&self, id: &str) -> Option<Arc<Tunnel>> {
        lock(&self.inner).by_devbox.get(id).cloned()
    }

    /// Forget a devbox's tunnel; its URL answers 404 from now on.
    pub(super) fn remove(&self, devbox_id: &str) -> bool {
        let mut maps = lock(&self.inner);
        match maps.by_devbox.remove(devbox_id) {
            Some(t) => {
                maps.by_key.remove(&t.view.tunnel_key);
                t.removed.send_replace(true);
                true
            }
            None => false,
        }
    }
}

/// How a tunnel key is recorded in the database (SHA-256, hex).
fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.to_ascii_lowercase().as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

impl Devboxes {
    /// Give a running devbox a tunnel. Asking again with the same settings answers the
    /// tunnel it has; other settings are a conflict (remove it first).
    pub async fn enable_tunnel(
        &self,
        id: &str,
        principal: &Principal,
        config: TunnelConfig,
    ) -> ApiResult<TunnelView> {
        config.check()?;
        self.running_live(id, principal).await?;
        let auth_mode = config.auth_mode.unwrap_or(TunnelAuthMode::Open);
        let http_keep_alive = config.http_keep_alive.unwrap_or(true);
        let wake_on_http = config.wake_on_http.unwrap_or(false);
        let tunnel = {
            let mut maps = lock(&self.tunnels.inner);
            if let Some(t) = maps.by_devbox.get(id) {
                if t.view.auth_mode == auth_mode
                    && t.view.http_keep_alive == http_keep_alive
                    && t.view.wake_on_http == wake_on_http
                {
                    return Ok(t.view.clone());
                }
                return Err(ApiError::Conflict(format!(
                    "devbox {id} already has a tunnel with other settings; remove it (remove_tunnel) before enabling another"
                )));
            }
            let token = (auth_mode == TunnelAuthMode::Authenticated).then(|| random_hex(32));
            let tunnel = Arc::new(Tunnel {
                devbox_id: id.to_string(),
                token_hash: token.as_ref().map(|t| Sha256::digest(t.as_bytes()).into()),
                removed: tokio::sync::watch::channel(false).0,
                view: TunnelView {
                    auth_mode,
                    create_time_ms: now_ms(),
                    http_keep_alive,
                    tunnel_key: random_hex(16),
                    wake_on_http,
                    auth_token: token,
                },
            });
            maps.by_key
                .insert(tunnel.view.tunnel_key.clone(), tunnel.clone());
            maps.by_devbox.insert(id.to_string(), tunnel.clone());
            tunnel
        };
        // A devbox stopped meanwhile takes its tunnel with it.
        if !self.is_live(id) {
            self.tunnels.remove(id);
            return Err(ApiError::Conflict(format!(
                "devbox {id} stopped while its tunnel was being enabled"
            )));
        }
        // Other nodes of a cluster find this node by the key's hash.
        self.store
            .set_tunnel_key_hash(id, Some(&key_hash(&tunnel.view.tunnel_key)))
            .await?;
        self.notifier.notify(id);
        Ok(tunnel.view.clone())
    }

    /// Remove a devbox's tunnel; its URL answers 404 at once.
    pub async fn remove_tunnel(&self, id: &str, principal: &Principal) -> ApiResult<()> {
        self.authorized(id, principal).await?;
        if !self.tunnels.remove(id) {
            return Err(ApiError::NotFound(format!(
                "devbox {id} has no tunnel; enable one with enable_tunnel"
            )));
        }
        self.store.set_tunnel_key_hash(id, None).await?;
        self.notifier.notify(id);
        Ok(())
    }

    /// The devbox's tunnel as its `DevboxView` shows it.
    pub(super) fn tunnel_view(&self, id: &str) -> Option<TunnelView> {
        self.tunnels.of_devbox(id).map(|t| t.view.clone())
    }

    /// The tunnel named `key`, if any.
    pub fn tunnel(&self, key: &str) -> Option<Arc<Tunnel>> {
        self.tunnels.by_key(key)
    }

    /// In a cluster: the address of the node whose devbox has the tunnel `key`, when it is
    /// not this node.
    pub async fn tunnel_elsewhere(&self, key: &str) -> ApiResult<Option<String>> {
        if !self.config.is_cluster() {
            return Ok(None);
        }
        Ok(self
            .store
            .tunnel_node_address(&key_hash(key))
            .await?
            .filter(|(node, _)| node != &self.config.node_id)
            .map(|(_, address)| address))
    }

    /// A raw connection to `port` inside the tunnel's devbox (made by its agent); counts as
    /// activity when the tunnel says so. A `wake_on_http` tunnel of a suspended devbox
    /// resumes it first (and waits for one being suspended or resumed), then gives the
    /// devbox's servers a few seconds to listen again.
    pub async fn connect_tunnel(
        self: &Arc<Self>,
        tunnel: &Tunnel,
        port: u16,
    ) -> ApiResult<tokio::net::UnixStream> {
        let id = &tunnel.devbox_id;
        let mut woke = false;
        let live = loop {
            let live = lock(&self.live).get(id).cloned();
            match live.filter(|l| l.devbox.exit_reason().is_none()) {
                Some(l) => break l,
                None if tunnel.view.wake_on_http && !woke => {
                    self.wake(id).await?;
                    woke = true;
                }
                None => {
                    return Err(ApiError::NotFound(format!(
                        "devbox {id} of this tunnel is not running"
                    )))
                }
            }
        };
        if tunnel.view.http_keep_alive {
            self.touch(&live);
        }
        let patience = tokio::time::Instant::now() + WAKE_PORT_PATIENCE;
        let connected = loop {
            match live.devbox.connect_port(port).await {
                Err(openloop_sandbox::SandboxError::Agent { code, .. })
                    if woke && code == "refused" && tokio::time::Instant::now() < patience =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => break other,
            }
        };
        match connected {
            Ok(s) => Ok(s),
            Err(openloop_sandbox::SandboxError::Agent { code, message }) => Err(match code.as_str() {
                "refused" => ApiError::BadGateway(format!(
                    "nothing is listening on port {port} inside devbox {id}; start a server there on 127.0.0.1:{port} or 0.0.0.0:{port}"
                )),
                "timeout" => ApiError::BadGateway(format!(
                    "port {port} inside devbox {id} did not accept the connection in time"
                )),
                "invalid" => ApiError::BadRequest(message),
                _ => ApiError::BadGateway(format!(
                    "could not reach port {port} inside devbox {id}: {message}"
                )),
            }),
            Err(e) => Err(self.op_error(id, e).await),
        }
    }

    /// Bring a suspended devbox back for a request through its `wake_on_http` tunnel.
    async fn wake(self: &Arc<Self>, id: &str) -> ApiResult<()> {
        let rec = self.store.get_devbox(id).await?;
        if rec.status == "suspended" {
            tracing::info!(devbox = %id, "a request through its tunnel wakes a suspended devbox");
            // In a task of its own: a caller that goes away does not cut the resume short.
            let this = Arc::clone(self);
            let owned = id.to_string();
            match tokio::spawn(async move { this.resume_now(&owned).await }).await {
                Ok(Ok(_)) => {}
                // Another request (or a resume call) got there first.
                Ok(Err(ApiError::Conflict(_))) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(ApiError::Internal(format!("waking devbox {id}: {e}"))),
            }
        }
        match self
            .wait_for_status(
                id,
                &[
                    DevboxStatus::Running,
                    DevboxStatus::Failure,
                    DevboxStatus::Shutdown,
                ],
                WAKE_WITHIN,
            )
            .await?
        {
            Some(v) if v.status == DevboxStatus::Running => Ok(()),
            Some(v) => Err(ApiError::NotFound(format!(
                "devbox {id} of this tunnel is {}",
                v.status
            ))),
            None => Err(ApiError::Unavailable(format!(
                "devbox {id} did not come back within {} s of a request through its tunnel; try again",
                WAKE_WITHIN.as_secs()
            ))),
        }
    }
}
