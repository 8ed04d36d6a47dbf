//! The HTTP side of tunnels: requests whose host is `{port}-{tunnel_key}.tunnel.{domain}`
//! (the server's `--tunnel-domain`) go to `127.0.0.1:{port}` inside the tunnel's devbox;
//! every other request goes on to the API.
//!
//! [`in_front`] wraps the router of the TCP listener, so tunnel hosts are recognised before
//! any API route (and never need an API key). A request is checked in this order: the
//! tunnel key must name a live tunnel (else 404, the same for a removed tunnel, a stopped
//! devbox or a made-up key), an `authenticated` tunnel needs
//! `X-Runloop-Tunnel-Authorization: Bearer {auth_token}` (else 401), and the port must be
//! 1–65535 (else 400). Then the devbox's agent connects to the port (nothing listening:
//! 502) and the request is sent over that connection with hyper's client: `Host` becomes
//! `localhost:{port}` (the original is in `X-Forwarded-Host`), the tunnel token is not passed
//! on, hop-by-hop headers are dropped, bodies stream both ways. A WebSocket (any `Upgrade`)
//! is passed through: once the devbox answers 101 the two connections are spliced. Removing
//! the tunnel cuts bodies still streaming and upgraded connections through it. Upgraded
//! connections leave the HTTP listener's count, so they have a cap of their own
//! (`--http-max-connections`).

use crate::error::ApiError;
use crate::routes::forward::FORWARDED;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The header an `authenticated` tunnel's token travels in (Runloop's name).
pub const TUNNEL_AUTH_HEADER: &str = "x-runloop-tunnel-authorization";

#[derive(Clone)]
struct Front {
    state: AppState,
    api: Router,
    /// `.tunnel.{domain}`, lower case.
    suffix: Arc<str>,
    /// Upgraded (WebSocket) connections open at once.
    upgrades: Arc<Semaphore>,
}

/// `api` behind the tunnel dispatcher.
pub fn in_front(state: AppState, api: Router) -> Router {
    let suffix: Arc<str> = format!(
        ".tunnel.{}",
        state.config.tunnel_domain.to_ascii_lowercase()
    )
    .into();
    let upgrades = Arc::new(Semaphore::new(state.config.http_max_connections.max(1)));
    Router::new().fallback(dispatch).with_state(Front {
        state,
        api,
        suffix,
        upgrades,
    })
}

/// Where a request's host name points.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    /// Not a tunnel host: the API.
    Api,
    /// `{port}-{key}` under the tunnel domain (neither checked yet).
    Tunnel { port: &'a str, key: &'a str },
    /// Under the tunnel domain, but not `{port}-{key}`.
    Malformed,
}

fn target<'a>(host: &'a str, suffix: &str) -> Target<'a> {
    // Drop a `:port` of the listener.
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() <= suffix.len()
        || !name.is_char_boundary(name.len() - suffix.len())
        || !name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    {
        return Target::Api;
    }
    let label = &name[..name.len() - suffix.len()];
    match label.split_once('-') {
        Some((port, key)) if !port.is_empty() && !key.is_empty() && !label.contains('.') => {
            Target::Tunnel { port, key }
        }
        _ => Target::Malformed,
    }
}

async fn dispatch(State(front): State<Front>, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let target = host
        .as_deref()
        .map(|h| target(h, &front.suffix))
        .unwrap_or(Target::Api);
    match target {
        Target::Api => match front.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        Target::Malformed => ApiError::NotFound(format!(
            "no tunnel at this host name; tunnel URLs look like {{port}}-{{tunnel_key}}{}",
            front.suffix
        ))
        .into_response(),
        Target::Tunnel { port, key } => {
            let (port, key) = (port.to_string(), key.to_ascii_lowercase());
            let host = host.unwrap_or_default();
            match proxy(&front, &host, &port, &key, req).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            }
        }
    }
}

async fn proxy(
    front: &Front,
    host: &str,
    port: &str,
    key: &str,
    mut req: Request,
) -> Result<Response, ApiError> {
    let gone = || {
        ApiError::NotFound(format!(
            "no tunnel named {key}: it was removed, or its devbox stopped; enable_tunnel gives a devbox a new one"
        ))
    };
    let Some(tunnel) = front.state.devboxes.tunnel(key) else {
        // In a cluster the tunnel may be another node's: the request goes there, once.
        if !req.headers().contains_key(FORWARDED) {
            if let Some(address) = front.state.devboxes.tunnel_elsewhere(key).await? {
                return relay_to_node(front, &address, req).await;
            }
        }
        return Err(gone());
    };
    let token = req
        .headers()
        .get(TUNNEL_AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if !tunnel.admits(token) {
        return Err(ApiError::Unauthorized(format!(
            "this tunnel is authenticated: send its auth_token as `X-Runloop-Tunnel-Authorization: Bearer <auth_token>`{}",
            if token.is_some() { " (the token sent is not this tunnel's)" } else { "" }
        )));
    }
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(ApiError::BadRequest(format!(
                "'{port}' is not a port: the host name starts with the port inside the devbox, 1 to 65535"
            )))
        }
    };
    let upgrade = is_upgrade(req.headers());
    let permit = upgrade_permit(front, upgrade)?;
    let stream = front.state.devboxes.connect_tunnel(&tunnel, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad_answer(port, &tunnel.devbox_id, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "tunnel connection ended");
        }
    });
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let out = outgoing(req, host, port, upgrade);
    let resp = sender
        .send_request(out)
        .await
        .map_err(|e| bad_answer(port, &tunnel.devbox_id, e))?;
    Ok(relay_response(
        resp,
        client_upgrade,
        permit,
        tunnel.removed(),
    ))
}

/// Hand the answer back: a `101` splices the client's upgraded connection with the other
/// side's (until `removed`), any other answer streams back (until `removed`).
fn relay_response(
    mut resp: hyper::Response<hyper::body::Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    removed: impl std::future::Future<Output = ()> + Send + 'static,
) -> Response {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let backend = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let _permit = permit;
                let (Ok(client), Ok(backend)) = (client.await, backend.await) else {
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut backend = TokioIo::new(backend);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut backend) => {}
                    _ = removed => {}
                }
            });
            let (mut parts, _) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(parts, Body::empty());
        }
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    // A body still streaming when the tunnel is removed ends there.
    let body = Body::new(body)
        .into_data_stream()
        .take_until(Box::pin(removed));
    Response::from_parts(parts, Body::from_stream(body))
}

/// Cluster mode: the tunnel's devbox lives on the node at `address`; the request goes there
/// as it came (its host name, its tunnel token: that node checks them), marked forwarded so it
/// goes no further, over a connection of its own (upgrades pass through).
async fn relay_to_node(
    front: &Front,
    address: &str,
    mut req: Request,
) -> Result<Response, ApiError> {
    let unreachable = |e: String| {
        ApiError::BadGateway(format!(
            "this tunnel's devbox lives on the node at {address}, which did not answer: {e}"
        ))
    };
    let authority = address
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
        .ok_or_else(|| unreachable("its address is not http://host:port".into()))?;
    let upgrade = is_upgrade(req.headers());
    let permit = upgrade_permit(front, upgrade)?;
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "relayed tunnel connection ended");
        }
    });
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap_or_else(|_| axum::http::Uri::from_static("/"));
    parts.version = axum::http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Ok(v) = HeaderValue::from_str(&front.state.config.node_id) {
        parts.headers.insert(FORWARDED, v);
    }
    parts.extensions = Default::default();
    let resp = sender
        .send_request(hyper::Request::from_parts(parts, body))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(relay_response(
        resp,
        client_upgrade,
        permit,
        std::future::pending::<()>(),
    ))
}

/// A place among the upgraded connections, for a request that asks to upgrade.
fn upgrade_permit(
    front: &Front,
    upgrade: bool,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
    if !upgrade {
        return Ok(None);
    }
    front
        .upgrades
        .clone()
        .try_acquire_owned()
        .map(Some)
        .map_err(|_| {
            ApiError::Unavailable(
                "too many upgraded (WebSocket) tunnel connections are open; try again later".into(),
            )
        })
}

fn bad_answer(port: u16, devbox: &str, e: hyper::Error) -> ApiError {
    ApiError::BadGateway(format!(
        "port {port} inside devbox {devbox} did not answer with HTTP: {e}"
    ))
}

/// Whether the request asks to switch protocols (`Connection: upgrade` and an `Upgrade`).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Headers that belong to one hop, not to the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Drop hop-by-hop headers (and those `Connection` names); an upgrade keeps
/// `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .filter(|n| n != header::UPGRADE)
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The request as the devbox sees it: origin-form target, `Host: localhost:{port}`.
fn outgoing(req: Request, host: &str, port: u16, upgrade: bool) -> hyper::Request<Body> {
    let (mut parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = target
        .parse()
        .unwrap_or_else(|_| axum::http::Uri::from_static("/"));
    parts.version = axum::http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.remove(TUNNEL_AUTH_HEADER);
    if let Ok(v) = HeaderValue::from_str(&format!("localhost:{port}")) {
        parts.headers.insert(header::HOST, v);
    }
    if let Ok(v) = HeaderValue::from_str(host) {
        parts.headers.insert("x-forwarded-host", v);
    }
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    parts.extensions = Default::default();
    hyper::Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        let s = ".tunnel.localhost";
        assert_eq!(
            target("8080-abc.tunnel.localhost:8700", s),
            Target::Tunnel {
                port: "8080",
                key: "abc"
            }
        );
        assert_eq!(
            target("8080-ABC.Tunnel.LOCALHOST.", s),
            Target::Tunnel {
                port: "8080",
                key: "ABC"
            }
        );
        assert_eq!(target("127.0.0.1:8700", s), Target::Api);
        assert_eq!(target("localhost", s), Target::Api);
        assert_eq!(target("tunnel.localhost", s), Target::Api);
        assert_eq!(target("evil.tunnel.localhost.example", s), Target::Api);
        assert_eq!(target("nokey.tunnel.localhost", s), Target::Malformed);
        assert_eq!(target("a.8080-k.tunnel.localhost", s), Target::Malformed);
        assert_eq!(target("-k.tunnel.localhost", s), Target::Malformed);
        assert_eq!(
            target("99999-k.tunnel.localhost", s),
            Target::Tunnel {
                port: "99999",
                key: "k"
            }
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        assert!(plain.get("x-secret").is_none() && plain.get("keep-alive").is_none());
        assert!(plain.get(header::UPGRADE).is_none() && plain.get(header::CONNECTION).is_none());
        assert!(plain.get("x-kept").is_some());
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
    }
}
