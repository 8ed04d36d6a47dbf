//! `/ui/keys`: create (the secret is shown once, on the answer to the form), list and revoke
//! API keys. Revoking a key ends its dashboard sessions, this one included.

use crate::error::UiResult;
use crate::layout::{self, Nav};
use crate::session::{CsrfForm, Session};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use openloop_api::state::AppState;
use serde::Deserialize;

/// The page, with a just-created key's secret when there is one (never stored, never in a URL).
async fn render(
    state: &AppState,
    session: &Session,
    created: Option<(&str, &str)>,
    error: Option<&str>,
) -> UiResult<Html<String>> {
    let keys = state.store.list_keys().await?;
    let body = html! {
        h1 { "API keys" }
        @if let Some((name, secret)) = created {
            div.notice.ok role="status" #new-key {
                p { "Key " strong { (name) } " created. Copy its secret now: it is shown only this once." }
                code.secret #new-key-secret { (secret) }
            }
        }
        @if let Some(e) = error { p.notice.bad role="alert" { (e) } }
        div.card {
            form.row method="post" action="/ui/keys" {
                (layout::csrf(session))
                label { "Name" input type="text" name="name" required maxlength="100" placeholder="ci, laptop, …"; }
                button type="submit" { "Create key" }
            }
        }
        table #keys {
            thead { tr { th { "Name" } th { "Id" } th { "Starts with" } th { "Created" } th { "Status" } th {} } }
            tbody {
                @for k in &keys {
                    tr data-key-name=(k.name) {
                        td { (k.name) @if k.id == session.key_id { " " span.muted { "(this session)" } } }
                        td { code { (k.id) } }
                        td { code { (k.prefix) "…" } }
                        td { (layout::time(k.created_at_ms)) }
                        td {
                            @match k.revoked_at_ms {
                                Some(at) => { span.badge.failed { "revoked" } " " (layout::time(at)) },
                                None => span.badge.success { "active" },
                            }
                        }
                        td {
                            @if k.revoked_at_ms.is_none() {
                                form.inline method="post" action={ "/ui/keys/" (k.id) "/revoke" }
                                    data-confirm={ "Revoke key " (k.name) "? Everything using it stops working." } {
                                    (layout::csrf(session))
                                    button.danger type="submit" { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(session, Nav::Keys, "API keys", body))
}

pub async fn list(State(state): State<AppState>, session: Session) -> UiResult<Html<String>> {
    render(&state, &session, None, None).await
}

#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

pub async fn create(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<CreateForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    let name = form.name.trim();
    if name.is_empty() || name.len() > 100 {
        let page = render(
            &state,
            &session,
            None,
            Some("A key needs a name of 1 to 100 characters."),
        )
        .await?;
        return Ok((StatusCode::BAD_REQUEST, page).into_response());
    }
    let (key, secret) = state.store.create_key(name).await?;
    let mut resp = render(&state, &session, Some((&key.name, &secret)), None)
        .await?
        .into_response();
    // The secret must not linger in caches or the back button's history.
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

pub async fn revoke(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    state.store.revoke_key(&id).await?;
    // Revoking the key of this session signs it out (its session is gone).
    Ok(Redirect::to("/ui/keys").into_response())
}
