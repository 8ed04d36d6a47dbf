//! `/ui/repositories`: connect a git repository (push-to-deploy), see each connection's
//! webhook URL (its secret is shown once, after the form's redirect) and its last deliveries;
//! remove a connection.

use crate::error::UiResult;
use crate::flash;
use crate::layout::{self, Nav};
use crate::session::{CsrfForm, Session};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use openloop_api::services::repositories::{base_url, CreateRepository, CreatedRepository};
use openloop_api::state::AppState;
use serde::Deserialize;
use serde_json::Value;

/// Deliveries shown per connection (the API keeps the last 100).
const DELIVERIES_SHOWN: i64 = 10;

#[derive(Deserialize, Default)]
pub struct ConnectForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    branch: String,
    #[serde(default)]
    poll_seconds: String,
}

async fn render(
    state: &AppState,
    session: &Session,
    base: &str,
    created: Option<&Value>,
    form: &ConnectForm,
    error: Option<&str>,
) -> UiResult<Html<String>> {
    let repos = state.repositories.list(base).await?.repositories;
    let mut deliveries = Vec::with_capacity(repos.len());
    for r in &repos {
        deliveries.push(
            state
                .repositories
                .deliveries(&r.id, Some(DELIVERIES_SHOWN))
                .await?
                .deliveries,
        );
    }
    let body = html! {
        h1 { "Repositories" }
        @if let Some(c) = created {
            @let field = |k: &str| c[k].as_str().unwrap_or("").to_string();
            div.notice.ok role="status" #new-repository {
                p { "Connected " strong { (field("url")) } " (branch " code { (field("branch")) } ") to project "
                    strong { (field("name")) } ". Add this webhook to the repository's host; the secret is shown only this once." }
                dl.facts {
                    dt { "Webhook URL" } dd { code.secret #new-webhook-url { (field("webhook_url")) } }
                    dt { "Secret" } dd { code.secret #new-webhook-secret { (field("webhook_secret")) } }
                    dt { "Content type" } dd { code { "application/json" } " · events: " code { "push" } }
                }
                p.muted { "GitHub: Settings → Webhooks (the secret signs X-Hub-Signature-256). Gitea/Forgejo: Settings → Webhooks → Gitea. GitLab: Settings → Webhooks, the secret as the Secret token." }
            }
        }
        details.card open[error.is_some() || repos.is_empty()] {
            summary { "Connect a repository" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.row method="post" action="/ui/repositories" {
                (layout::csrf(session))
                label { "Git URL" input type="text" name="url" value=(form.url) required placeholder="https://git.example.com/me/agent.git"; }
                label { "Project" input type="text" name="name" value=(form.name) required placeholder="my_agent"; }
                label { "Branch" input type="text" name="branch" value=(form.branch) placeholder="main"; }
                label { "Poll every (s, optional)" input type="number" name="poll_seconds" min="1" value=(form.poll_seconds) placeholder="webhooks only"; }
                button type="submit" { "Connect" }
            }
        }
        @if repos.is_empty() {
            (layout::empty("No repository is connected."))
        }
        @for (r, ds) in repos.iter().zip(&deliveries) {
            section.card.repository id={ "repo-" (r.id) } {
                h2 { a href={ "/ui/projects/" (r.name) } { (r.name) } " ← " code { (r.url) } " " span.badge { (r.branch) } }
                dl.facts {
                    dt { "Webhook URL" } dd { code { (r.webhook_url) } }
                    dt { "Polling" } dd { @match r.poll_seconds { Some(s) => { "every " (s) " s" }, None => span.muted { "off (webhooks only)" } } }
                    dt { "Last deployed" } dd {
                        @match (&r.last_commit, &r.last_deployment_id) {
                            (Some(c), Some(d)) => { code { (c.get(..12).unwrap_or(c)) } " → " a href={ "/ui/deployments/" (d) } { (layout::short_id(d)) } },
                            _ => span.muted { "nothing yet" },
                        }
                    }
                    dt { "Connected" } dd { (layout::time(r.created_at_ms)) }
                }
                h3 { "Last deliveries" }
                @if ds.is_empty() { (layout::empty("None yet.")) } @else {
                    table.deliveries {
                        thead { tr { th { "Received" } th { "From" } th { "Event" } th { "Commit" } th { "Outcome" } th { "Message" } th { "Deployment" } } }
                        tbody {
                            @for d in ds {
                                tr {
                                    td { (layout::time(d.received_at_ms)) }
                                    td { (d.provider.as_str()) }
                                    td { (d.event.clone().unwrap_or_default()) " " @if let Some(g) = &d.git_ref { code { (g) } } }
                                    td { @if let Some(c) = &d.commit { code { (c.get(..12).unwrap_or(c)) } } }
                                    td { (layout::status(d.outcome.as_str())) }
                                    td { (d.message) }
                                    td { @if let Some(dep) = &d.deployment_id { a href={ "/ui/deployments/" (dep) } { (layout::short_id(dep)) } } }
                                }
                            }
                        }
                    }
                }
                form.inline method="post" action={ "/ui/repositories/" (r.id) "/remove" }
                    data-confirm={ "Disconnect " (r.url) "? Pushes will no longer deploy." } {
                    (layout::csrf(session))
                    p { button.danger type="submit" { "Disconnect" } }
                }
            }
        }
    };
    Ok(layout::page(
        session,
        Nav::Repositories,
        "Repositories",
        body,
    ))
}

#[derive(Deserialize)]
pub struct ListQuery {
    /// The one-time message holding a connection just made.
    connected: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> UiResult<Response> {
    let base = base_url(&headers, state.config.listen);
    let created = q
        .connected
        .as_deref()
        .and_then(|id| flash::take(&session.key_id, id));
    let error = (q.connected.is_some() && created.is_none()).then_some(
        "That webhook secret has already been shown; it is not shown again. Disconnect and connect the repository again for a new one.",
    );
    let page = render(
        &state,
        &session,
        &base,
        created.as_ref(),
        &ConnectForm::default(),
        error,
    )
    .await?;
    let mut resp = page.into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

pub async fn create(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<ConnectForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    let base = base_url(&headers, state.config.listen);
    let poll_seconds = match form.poll_seconds.trim() {
        "" => Ok(None),
        s => s.parse::<u64>().map(Some).map_err(|_| {
            openloop_api::error::ApiError::BadRequest(
                "the polling interval must be a whole number of seconds".into(),
            )
        }),
    };
    let branch = Some(form.branch.trim().to_string()).filter(|b| !b.is_empty());
    let outcome = match poll_seconds {
        Ok(poll_seconds) => {
            let req = CreateRepository {
                url: form.url.clone(),
                name: form.name.trim().to_string(),
                branch,
                poll_seconds,
            };
            state.repositories.create(req, &base).await
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(CreatedRepository {
            repository: r,
            webhook_secret,
        }) => {
            let id = flash::put(
                &session.key_id,
                serde_json::json!({
                    "url": r.url, "branch": r.branch, "name": r.name,
                    "webhook_url": r.webhook_url, "webhook_secret": webhook_secret,
                }),
            );
            Ok(Redirect::to(&format!("/ui/repositories?connected={id}")).into_response())
        }
        Err(e) if !e.status().is_server_error() => {
            let page = render(&state, &session, &base, None, &form, Some(&e.to_string())).await?;
            Ok((e.status(), page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn remove(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    let base = base_url(&headers, state.config.listen);
    state.repositories.delete(&id, &base).await?;
    Ok(Redirect::to("/ui/repositories").into_response())
}
