//! `/ui/keys`: create (the secret is shown once, after the form's redirect), list and revoke
//! API keys. Revoking a key ends its dashboard sessions; a session's own key cannot revoke itself
//! (as in the API).

use crate::error::UiResult;
use crate::flash;
use crate::layout::{self, Nav};
use crate::session::{CsrfForm, Session};
use axum::extract::{Path, Query, State};
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
                            @if k.revoked_at_ms.is_none() && k.id != session.key_id {
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

#[derive(Deserialize)]
pub struct ListQuery {
    /// The one-time message holding a key just created.
    created: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> UiResult<Response> {
    let created = q
        .created
        .as_deref()
        .and_then(|id| flash::take(&session.key_id, id));
    let shown = created.as_ref().and_then(|v| {
        Some((
            v["name"].as_str()?.to_string(),
            v["secret"].as_str()?.to_string(),
        ))
    });
    let gone = q.created.is_some() && shown.is_none();
    let error = gone.then_some("That key's secret has already been shown; it is not kept. Revoke the key and create another if it was not copied.");
    let mut resp = render(
        &state,
        &session,
        shown.as_ref().map(|(n, s)| (n.as_str(), s.as_str())),
        error,
    )
    .await?
    .into_response();
    // The secret must not linger in caches or the back button's history.
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
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
    let id = flash::put(
        &session.key_id,
        serde_json::json!({"name": key.name, "secret": secret}),
    );
    Ok(Redirect::to(&format!("/ui/keys?created={id}")).into_response())
}

pub async fn revoke(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    if id == session.key_id {
        // As the API: a key does not revoke itself (sign in with another key to do it).
        let page = render(
            &state,
            &session,
            None,
            Some("This session's own key cannot revoke itself; sign in with another key to revoke it."),
        )
        .await?;
        return Ok((StatusCode::CONFLICT, page).into_response());
    }
    state.store.revoke_key(&id).await?;
    Ok(Redirect::to("/ui/keys").into_response())
}
