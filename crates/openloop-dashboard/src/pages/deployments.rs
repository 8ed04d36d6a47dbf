//! `/ui/deployments`: every deployment, live, with a form to deploy; one deployment with its
//! build log (live while it builds) and its failure reason.

use super::PAGE_SIZE;
use crate::error::UiResult;
use crate::layout::{self, Nav};
use crate::session::Session;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use openloop_api::services::deployments::CreateDeployment;
use openloop_api::state::AppState;
use openloop_store::deployments::Deployment;
use serde::Deserialize;

/// Build log lines rendered with the page; later lines arrive live.
const LOG_LINES: i64 = 10_000;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    before: Option<String>,
}

fn finished(d: &Deployment) -> bool {
    matches!(d.status.as_str(), "deployed" | "failed")
}

fn rows_markup(rows: &[Deployment], active: &[Deployment]) -> Markup {
    html! {
        @if rows.is_empty() {
            tr { td colspan="7" { (layout::empty("Nothing deployed yet: deploy a repository above, or connect one on the Repositories page.")) } }
        }
        @for d in rows {
            tr {
                td { a href={ "/ui/deployments/" (d.id) } { (layout::short_id(&d.id)) } }
                td {
                    @if active.iter().any(|a| a.project_name == d.project_name) {
                        a href={ "/ui/projects/" (d.project_name) } { (d.project_name) }
                    } @else {
                        (d.project_name)
                    }
                    @if active.iter().any(|a| a.id == d.id) { " " span.badge.success { "live" } }
                }
                td { code { (d.source) } }
                td { @if let Some(r) = &d.git_ref { code { (r) } } }
                td { (layout::status(&d.status)) }
                td { (layout::time(d.created_at_ms)) }
                td { (layout::duration(d.started_at_ms, d.ended_at_ms)) }
            }
        }
    }
}

async fn page(
    state: &AppState,
    before: Option<&str>,
) -> UiResult<(Vec<Deployment>, Option<String>)> {
    let mut rows = state.store.page_deployments(before, PAGE_SIZE + 1).await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let next = more.then(|| rows.last().map(|r| r.id.clone())).flatten();
    Ok((rows, next))
}

#[derive(Deserialize, Default)]
pub struct DeployForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    source: String,
    #[serde(default, rename = "ref")]
    git_ref: String,
    #[serde(default)]
    name: String,
}

async fn render_list(
    state: &AppState,
    session: &Session,
    before: Option<&str>,
    form: &DeployForm,
    error: Option<&str>,
) -> UiResult<Html<String>> {
    let (rows, next) = page(state, before).await?;
    let active = state.store.active_deployments().await?;
    let live = before.is_none();
    let body = html! {
        h1 { "Deployments" }
        details.card open[error.is_some()] {
            summary { "Deploy a repository" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.row method="post" action="/ui/deployments" {
                (layout::csrf(session))
                label { "Source (a directory on the server or a git URL)"
                    input type="text" name="source" value=(form.source) required placeholder="/srv/agents/my_agent or https://…"; }
                label { "Ref (git only)" input type="text" name="ref" value=(form.git_ref) placeholder="main"; }
                label { "Project name" input type="text" name="name" value=(form.name) placeholder="from the source"; }
                button type="submit" { "Deploy" }
            }
        }
        table #deployments {
            thead { tr { th { "Id" } th { "Project" } th { "Source" } th { "Ref" } th { "Status" } th { "Created" } th { "Build time" } } }
            @if live {
                tbody #rows data-live-events="/ui/deployments/live" data-live-src="/ui/deployments/rows" { (rows_markup(&rows, &active)) }
            } @else {
                tbody #rows { (rows_markup(&rows, &active)) }
            }
        }
        div.pager {
            @if !live { a.button href="/ui/deployments" { "← Newest" } }
            (layout::older_link("/ui/deployments", &[], next.as_deref()))
        }
    };
    Ok(layout::page(session, Nav::Deployments, "Deployments", body))
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> UiResult<Html<String>> {
    render_list(
        &state,
        &session,
        q.before.as_deref(),
        &DeployForm::default(),
        None,
    )
    .await
}

pub async fn rows(State(state): State<AppState>, _: Session) -> UiResult<Html<String>> {
    let (rows, _) = page(&state, None).await?;
    let active = state.store.active_deployments().await?;
    Ok(Html(rows_markup(&rows, &active).into_string()))
}

pub async fn create(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<DeployForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    let req = CreateDeployment {
        source: form.source.trim().to_string(),
        git_ref: opt(&form.git_ref),
        name: opt(&form.name),
    };
    match state.deployments.create(req).await {
        Ok(d) => Ok(Redirect::to(&format!("/ui/deployments/{}", d.id)).into_response()),
        Err(e) if !e.status().is_server_error() => {
            let page = render_list(&state, &session, None, &form, Some(&e.to_string())).await?;
            Ok((StatusCode::BAD_REQUEST, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn detail(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> UiResult<Html<String>> {
    let d = state.store.get_deployment(&id).await?;
    let lines = state.store.deployment_logs(&id, 0, LOG_LINES).await?;
    let last = lines.last().map(|l| l.seq).unwrap_or(0);
    let functions: Vec<String> = openloop_api::model::DeploymentView::of(&d)?
        .functions
        .unwrap_or_default();
    let done = finished(&d);
    let live_project = state
        .store
        .active_deployment(&d.project_name)
        .await?
        .is_some();
    let body = html! {
        h1 { "Deployment " code { (d.id) } " " (layout::live_status(&d.status)) }
        @if let Some(reason) = &d.failure_reason {
            div.notice.bad role="alert" { strong { "Build failed: " } (reason) }
        }
        div.card {
            dl.facts {
                dt { "Project" } dd {
                    @if live_project { a href={ "/ui/projects/" (d.project_name) } { (d.project_name) } }
                    @else { (d.project_name) " " span.muted { "(no live deployment)" } }
                }
                dt { "Source" } dd { code { (d.source) } }
                dt { "Ref" } dd { @match &d.git_ref { Some(r) => code { (r) }, None => span.muted { "—" } } }
                dt { "Created" } dd { (layout::time(d.created_at_ms)) }
                dt { "Build started" } dd { (layout::time_opt(d.started_at_ms)) }
                dt { "Ended" } dd { (layout::time_opt(d.ended_at_ms)) " (" (layout::duration(d.started_at_ms, d.ended_at_ms)) ")" }
                dt { "Functions" } dd {
                    @if functions.is_empty() { span.muted { "—" } }
                    @for f in &functions { code { (f) } " " }
                }
            }
        }
        h2 { "Build log" }
        @let log = html! {
            @if lines.is_empty() { div.empty-log.muted { @if done { "No output." } @else { "Waiting for the build…" } } }
            @for l in &lines { div.log { (l.line) } }
        };
        @if done {
            pre.logs #build-log { (log) }
        } @else {
            pre.logs #build-log data-log-events={ "/ui/deployments/" (d.id) "/events?after=" (last) } data-log-format="text" { (log) }
        }
    };
    Ok(layout::page(&session, Nav::Deployments, "Deployment", body))
}
