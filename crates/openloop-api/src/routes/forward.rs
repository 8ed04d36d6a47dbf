//! Cluster mode: a devbox lives on one node; a call about it (`/v1/devboxes/{id}/…`) that
//! reaches another node is forwarded to its owner, at the address the owner recorded in
//! `nodes`, with the caller's own credentials (every node checks API keys against the same
//! database). Request and response bodies are streamed both ways, so uploads, downloads and
//! execution streams pass unchanged.
//!
//! Applied after authentication: an anonymous caller never makes a node look anything up
//! or forward anything. Only API-key callers are forwarded: a run's token is known only to
//! its own node, where its devboxes are. A forwarded request carries [`FORWARDED`]; a
//! request carrying it that reaches a node not owning the devbox is refused (a misconfigured
//! `--advertise-url`, or a caller trying to make a node act on a devbox it does not run),
//! never handled there.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use futures::TryStreamExt;
use std::sync::OnceLock;

/// Marks a request one node forwarded to another.
pub const FORWARDED: &str = "x-openloop-forwarded-by";

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// The devbox a path is about, if it names one (`/v1/devboxes/dbx_…[/…]`).
fn devbox_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/devboxes/")?;
    let id = rest.split('/').next()?;
    id.starts_with("dbx_").then_some(id)
}

pub async fn to_owner(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let by_key = req
        .extensions()
        .get::<Principal>()
        .is_some_and(|p| p.invocation_id().is_none());
    if !state.config.is_cluster() || !by_key {
        return Ok(next.run(req).await);
    }
    let Some(devbox) = devbox_of(req.uri().path()).map(str::to_string) else {
        return Ok(next.run(req).await);
    };
    let owner = match state.store.devbox_node(&devbox).await? {
        Some(n) if n != state.config.node_id => n,
        // Here, unknown (the handler answers 404), or recorded before cluster mode.
        _ => return Ok(next.run(req).await),
    };
    if req.headers().contains_key(FORWARDED) {
        return Err(ApiError::BadGateway(format!(
            "devbox {devbox} lives on node {owner}, but this request was forwarded to node {} instead: check each node's --advertise-url",
            state.config.node_id
        )));
    }
    let Some(node) = state.store.get_node(&owner).await? else {
        return Ok(next.run(req).await);
    };
    if node.status != "active" {
        // Its devboxes were marked failed when it was lost; the record answers.
        return Ok(next.run(req).await);
    }
    // The record itself is in the shared database: when its node does not answer (it may
    // be dying, not yet taken over), it is read here rather than failing.
    let record_read = req.method() == axum::http::Method::GET
        && req.uri().path().trim_end_matches('/') == format!("/v1/devboxes/{devbox}");
    if record_read {
        let (parts, body) = req.into_parts();
        let again = Request::from_parts(parts.clone(), Body::empty());
        return match forward(
            &state.config.node_id,
            &node.address,
            Request::from_parts(parts, body),
        )
        .await
        {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::warn!(devbox = %devbox, node = %owner, error = %e, "the devbox's node did not answer; reading its record here");
                Ok(next.run(again).await)
            }
        };
    }
    forward(&state.config.node_id, &node.address, req)
        .await
        .map_err(|e| {
            ApiError::Unavailable(format!(
                "devbox {devbox} lives on node {owner} ({}), which did not answer: {e}; retry, or check `openloop nodes`",
                node.address
            ))
        })
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    // No overall timeout: an execution or a wait may take as long as it takes.
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap_or_default()
    })
}

async fn forward(me: &str, address: &str, req: Request) -> Result<Response, reqwest::Error> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{path}", address.trim_end_matches('/'));
    let mut out = client().request(parts.method.clone(), url);
    for (name, value) in parts.headers.iter() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.header(name, value);
        }
    }
    out = out.header(HeaderName::from_static(FORWARDED), me);
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let resp = out.body(body).send().await?;
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY));
    for (name, value) in resp.headers().iter() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            builder = builder.header(name, value);
        }
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    Ok(builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty())))
}

#[cfg(test)]
mod tests {
    use super::devbox_of;

    #[test]
    fn only_paths_about_one_devbox_name_it() {
        assert_eq!(devbox_of("/v1/devboxes/dbx_1/execute_sync"), Some("dbx_1"));
        assert_eq!(devbox_of("/v1/devboxes/dbx_1"), Some("dbx_1"));
        assert_eq!(devbox_of("/v1/devboxes"), None);
        assert_eq!(devbox_of("/v1/devboxes/disk_snapshots"), None);
        assert_eq!(devbox_of("/v1/functions/x"), None);
    }
}
