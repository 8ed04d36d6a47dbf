//! Who is calling: an API key (stored hashed) or a run's own token.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use openloop_sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The authenticated caller, put into request extensions by [`require_auth`].
#[derive(Debug, Clone)]
pub enum Principal {
    /// A holder of an API key: full access.
    Key { key_id: String },
    /// The SDK inside a run: its own devboxes, invoking functions, and reading or waiting on
    /// the invocations it started.
    Invocation { invocation_id: String },
}

impl Principal {
    pub fn invocation_id(&self) -> Option<&str> {
        match self {
            Principal::Invocation { invocation_id } => Some(invocation_id),
            Principal::Key { .. } => None,
        }
    }

    /// The API key's id, when the caller holds one.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Principal::Key { key_id } => Some(key_id),
            Principal::Invocation { .. } => None,
        }
    }

    pub fn require_key(&self) -> Result<(), ApiError> {
        match self {
            Principal::Key { .. } => Ok(()),
            Principal::Invocation { .. } => Err(ApiError::Forbidden(
                "a run's token may only use the devboxes of its own run; use an API key".into(),
            )),
        }
    }
}

/// Per-invocation tokens, held in memory for the life of the run.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Mutex<HashMap<String, String>>>);

impl Tokens {
    pub fn issue(&self, invocation_id: &str) -> String {
        let token = openloop_store::keys::new_secret("olt_");
        lock(&self.0).insert(
            openloop_store::keys::hash_secret(&token),
            invocation_id.to_string(),
        );
        token
    }

    pub fn revoke(&self, token: &str) {
        lock(&self.0).remove(&openloop_store::keys::hash_secret(token));
    }

    fn lookup(&self, token: &str) -> Option<String> {
        let h = openloop_store::keys::hash_secret(token);
        lock(&self.0).get(&h).cloned()
    }
}

/// Middleware: reject requests without a valid Bearer credential.
pub async fn require_auth(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let Some(secret) = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    else {
        return Err(ApiError::Unauthorized(
            "missing API key: send `Authorization: Bearer <key>` (create one with `openloop keys create`)".into(),
        ));
    };
    let principal = if secret.starts_with("olt_") {
        state
            .tokens
            .lookup(secret)
            .map(|invocation_id| Principal::Invocation { invocation_id })
    } else {
        use tracing::Instrument;
        state
            .store
            .verify_key(secret)
            .instrument(crate::stages::span("auth"))
            .await?
            .map(|k| Principal::Key { key_id: k.id })
    };
    let Some(principal) = principal else {
        return Err(ApiError::Unauthorized(
            "invalid or revoked API key; check the key or create a new one with `openloop keys create`".into(),
        ));
    };
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}
