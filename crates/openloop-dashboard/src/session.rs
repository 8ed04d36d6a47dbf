//! Signing in with an API key, the session cookie, CSRF tokens and signing out.
//!
//! - The session cookie (`openloop_session`) is a random token, `HttpOnly`, `SameSite=Strict`,
//!   scoped to `/ui`; the store keeps only its hash, tied to the key it was opened with, and
//!   honours it only while that key is live (revoking a key ends its sessions).
//! - Every state-changing form carries the session's CSRF token in a hidden field, compared
//!   in constant time; `SameSite=Strict` keeps the cookie off cross-site requests as well.
//! - The sign-in form itself is protected by a double-submit token (a `SameSite=Strict`
//!   cookie that must match the form's field), so another site cannot sign a visitor in
//!   with its own key.

use crate::error::{UiError, UiResult};
use crate::layout;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use openloop_api::auth::Principal;
use openloop_api::state::AppState;
use openloop_store::keys::new_secret;
use serde::Deserialize;

pub const SESSION_COOKIE: &str = "openloop_session";
const LOGIN_COOKIE: &str = "openloop_login";
/// How long a session lasts without signing in again.
const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

/// A signed-in visitor. Extracting it from a request checks the cookie against the store;
/// without a valid session the visitor is sent to the sign-in page.
#[derive(Debug, Clone)]
pub struct Session {
    pub key_id: String,
    pub key_name: String,
    pub csrf: String,
}

impl Session {
    /// The dashboard acts with the full rights of the key it was signed in with.
    pub fn principal(&self) -> Principal {
        Principal::Key {
            key_id: self.key_id.clone(),
        }
    }

    /// A state-changing form must carry this session's CSRF token.
    pub fn check_csrf(&self, token: &str) -> UiResult<()> {
        if constant_time_eq(token.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(UiError::Csrf)
        }
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> UiResult<Self> {
        let signed_out = || UiError::SignedOut {
            next: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/ui/".into()),
        };
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(signed_out());
        };
        match state.store.session(&token).await? {
            Some(s) => Ok(Session {
                key_id: s.key_id,
                key_name: s.key_name,
                csrf: s.csrf_token,
            }),
            None => Err(signed_out()),
        }
    }
}

/// The value of one cookie of the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn set_cookie(name: &str, value: &str, max_age_s: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age_s}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Where to go after signing in: only a page of the dashboard (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("/ui//") && !n.contains('\\') => {
            n.to_string()
        }
        _ => "/ui/invocations".into(),
    }
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

pub async fn login_page(headers: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    render_login(&headers, q.next.as_deref(), None, StatusCode::OK)
}

fn render_login(
    headers: &HeaderMap,
    next: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let existing = cookie(headers, LOGIN_COOKIE).filter(|t| t.len() == 44 && t.starts_with("oll_"));
    let token = existing.clone().unwrap_or_else(|| new_secret("oll_"));
    let body = html! {
        main.narrow.login {
            h1 { "Sign in to Openloop" }
            p.muted { "Use an API key: the admin key the server printed at its first start (saved in "
                code { "<data-dir>/admin-key" } "), or one made with " code { "openloop keys create" } "." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/ui/login" {
                input type="hidden" name="login_token" value=(token);
                input type="hidden" name="next" value=(safe_next(next));
                label for="key" { "API key" }
                input #key type="password" name="key" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
        }
    };
    let mut resp = (status, Html(layout::bare("Sign in", body).into_string())).into_response();
    if existing.is_none() {
        resp.headers_mut()
            .append(SET_COOKIE, set_cookie(LOGIN_COOKIE, &token, 3600));
    }
    resp
}

#[derive(Deserialize)]
pub struct LoginForm {
    key: String,
    #[serde(default)]
    login_token: String,
    next: Option<String>,
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> UiResult<Response> {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), form.login_token.as_bytes()) {
        return Ok(render_login(
            &headers,
            form.next.as_deref(),
            Some("The sign-in form expired; enter the key again."),
            StatusCode::FORBIDDEN,
        ));
    }
    let key = form.key.trim();
    let verified = match key.is_empty() {
        true => None,
        false => state.store.verify_key(key).await?,
    };
    let Some(k) = verified else {
        return Ok(render_login(
            &headers,
            form.next.as_deref(),
            Some("That API key is not valid or has been revoked."),
            StatusCode::UNAUTHORIZED,
        ));
    };
    let token = new_secret("ols_");
    let csrf = new_secret("olc_");
    state
        .store
        .create_session(&token, &k.id, &csrf, SESSION_TTL_MS)
        .await?;
    let mut resp = Redirect::to(&safe_next(form.next.as_deref())).into_response();
    let h = resp.headers_mut();
    h.append(
        SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, SESSION_TTL_MS / 1000),
    );
    h.append(SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0));
    Ok(resp)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        state.store.delete_session(&token).await?;
    }
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut()
        .append(SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_in_the_dashboard() {
        assert_eq!(safe_next(Some("/ui/keys")), "/ui/keys");
        assert_eq!(safe_next(Some("https://evil.example/")), "/ui/invocations");
        assert_eq!(safe_next(Some("//evil.example/ui/")), "/ui/invocations");
        assert_eq!(safe_next(Some("/ui//evil.example")), "/ui/invocations");
        assert_eq!(safe_next(None), "/ui/invocations");
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; openloop_session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
