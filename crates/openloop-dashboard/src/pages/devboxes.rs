//! `/ui/devboxes`: every devbox, by status; one devbox with its shape, creator, status
//! history, executions and their output, a command box (`execute_sync`) and shutdown.

use super::PAGE_SIZE;
use crate::error::UiResult;
use crate::layout::{self, Nav};
use crate::session::Session;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use openloop_api::error::ApiError;
use openloop_api::model::{DevboxStatus, ExecutionStatus};
use openloop_api::state::AppState;
use openloop_store::devboxes::DevboxRecord;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// How long the command box waits for a command before showing it still running.
const EXEC_WAIT: Duration = Duration::from_secs(60);

const STATUSES: [DevboxStatus; 5] = [
    DevboxStatus::Provisioning,
    DevboxStatus::Initializing,
    DevboxStatus::Running,
    DevboxStatus::Shutdown,
    DevboxStatus::Failure,
];

#[derive(Deserialize, Default)]
pub struct ListQuery {
    status: Option<String>,
    before: Option<String>,
}

/// Key ids → names, to show who created a devbox.
async fn key_names(state: &AppState) -> UiResult<HashMap<String, String>> {
    Ok(state
        .store
        .list_keys()
        .await?
        .into_iter()
        .map(|k| (k.id, k.name))
        .collect())
}

fn creator(d: &DevboxRecord, keys: &HashMap<String, String>) -> Markup {
    html! {
        @if let Some(inv) = &d.invocation_id {
            "invocation " a href={ "/ui/invocations/" (inv) } { (layout::short_id(inv)) }
        } @else if let Some(k) = &d.key_id {
            "key " (keys.get(k).cloned().unwrap_or_else(|| k.clone()))
        } @else {
            span.muted { "—" }
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> UiResult<Html<String>> {
    let status = q.status.as_deref().filter(|s| !s.is_empty());
    if let Some(s) = status {
        DevboxStatus::parse(s).map_err(|_| {
            ApiError::BadRequest(format!(
                "unknown status {s:?}; use provisioning, initializing, running, shutdown or failure"
            ))
        })?;
    }
    let before = q.before.as_deref().filter(|s| !s.is_empty());
    let mut rows = state
        .store
        .list_devboxes(status, before, PAGE_SIZE + 1)
        .await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let next = more.then(|| rows.last().map(|r| r.id.clone())).flatten();
    let keys = key_names(&state).await?;
    let body = html! {
        h1 { "Devboxes" }
        form.row method="get" action="/ui/devboxes" {
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES {
                        option value=(s.as_str()) selected[status == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        h2 {}
        table #devboxes {
            thead { tr { th { "Id" } th { "Name" } th { "Status" } th { "Created by" } th { "Created" } th { "Ended" } } }
            tbody {
                @if rows.is_empty() { tr { td colspan="6" { (layout::empty("No devboxes.")) } } }
                @for d in &rows {
                    tr {
                        td { a href={ "/ui/devboxes/" (d.id) } { (layout::short_id(&d.id)) } }
                        td { (d.name.clone().unwrap_or_default()) }
                        td { (layout::status(&d.status)) }
                        td { (creator(d, &keys)) }
                        td { (layout::time(d.created_at_ms)) }
                        td { (layout::time_opt(d.ended_at_ms)) }
                    }
                }
            }
        }
        div.pager {
            @if before.is_some() { a.button href="/ui/devboxes" { "← Newest" } }
            (layout::older_link("/ui/devboxes", &[("status", status)], next.as_deref()))
        }
    };
    Ok(layout::page(&session, Nav::Devboxes, "Devboxes", body))
}

async fn render_detail(
    state: &AppState,
    session: &Session,
    id: &str,
    notice: Option<&str>,
) -> UiResult<Html<String>> {
    let rec = state.store.get_devbox(id).await?;
    let view = state.devboxes.view_of(&rec).await?;
    let keys = key_names(state).await?;
    let mut executions = Vec::new();
    for e in state.devboxes.executions_of(id) {
        executions.push((e.command.clone(), e.started_at_ms, e.view(None).await));
    }
    let running = view.status == DevboxStatus::Running;
    let lp = &view.launch_parameters;
    let body = html! {
        h1 { "Devbox " code { (view.id) } " " (layout::live_status(view.status.as_str())) }
        @if let Some(n) = notice { p.notice.bad role="alert" { (n) } }
        div.card {
            dl.facts {
                dt { "Name" } dd { (view.name.clone().unwrap_or_else(|| "—".into())) }
                dt { "Created by" } dd { (creator(&rec, &keys)) }
                dt { "Created" } dd { (layout::time(view.create_time_ms)) }
                dt { "Ended" } dd { (layout::time_opt(view.end_time_ms)) }
                dt { "Shape" } dd {
                    (lp.get("resource_size_request").and_then(|v| v.as_str()).unwrap_or("SMALL"))
                    @if let Some(c) = lp.get("custom_cpu_cores").filter(|v| !v.is_null()) { " · " (c) " cores" }
                    @if let Some(m) = lp.get("custom_gb_memory").filter(|v| !v.is_null()) { " · " (m) " GB memory" }
                    @if let Some(d) = lp.get("custom_disk_size").filter(|v| !v.is_null()) { " · " (d) " GB disk" }
                }
                dt { "Network" } dd { (view.network.as_str().unwrap_or("none")) }
                @if let Some(r) = &view.shutdown_reason { dt { "Shutdown reason" } dd { (r) } }
                @if let Some(r) = &view.failure_reason { dt { "Failure" } dd.error { (r) } }
                @if let Some(m) = &view.status_message { dt { "Detail" } dd { (m) } }
            }
        }
        @if running {
            div.card {
                h2 { "Run a command" }
                form.row method="post" action={ "/ui/devboxes/" (view.id) "/exec" } {
                    (layout::csrf(session))
                    label style="flex:1" { "Command (run with sh -c, waits for it to finish)"
                        input type="text" name="command" required placeholder="echo hello"; }
                    button type="submit" { "Run" }
                }
                form.inline method="post" action={ "/ui/devboxes/" (view.id) "/shutdown" } data-confirm="Shut this devbox down?" {
                    (layout::csrf(session))
                    p { button.danger type="submit" { "Shut down" } }
                }
            }
        }
        h2 { "Executions" }
        @if executions.is_empty() {
            (layout::empty(if running { "No commands yet." } else { "Executions are kept while the devbox runs." }))
        }
        @for (command, started, e) in executions.iter().rev() {
            section.card.execution id={ "exec-" (e.execution_id) } {
                p { code { "$ " (command) } " " (layout::status(e.status.as_str()))
                    @if let Some(x) = e.exit_status { " exit " strong.exit { (x) } }
                    " · " (layout::time(*started)) }
                @if !e.stdout.is_empty() { pre.output.stdout { (e.stdout) } }
                @if !e.stderr.is_empty() { pre.output.stderr { (e.stderr) } }
                @if e.status != ExecutionStatus::Completed { p.muted { "Still running: reload for more output." } }
            }
        }
        h2 { "Status history" }
        table {
            thead { tr { th { "Status" } th { "At" } th { "Failure" } } }
            tbody {
                @for t in &view.state_transitions {
                    tr { td { (layout::status(t.status.as_str())) } td { (layout::time(t.transition_time_ms)) } td { (t.failure_reason.clone().unwrap_or_default()) } }
                }
            }
        }
    };
    Ok(layout::page(session, Nav::Devboxes, "Devbox", body))
}

pub async fn detail(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> UiResult<Html<String>> {
    render_detail(&state, &session, &id, None).await
}

#[derive(Deserialize)]
pub struct ExecForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    command: String,
}

/// `execute_sync` from the command box: run, wait, and show the output on the page.
pub async fn exec(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<ExecForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    if form.command.trim().is_empty() {
        let page = render_detail(&state, &session, &id, Some("Enter a command to run.")).await?;
        return Ok((StatusCode::BAD_REQUEST, page).into_response());
    }
    let started = state
        .devboxes
        .execute(
            &id,
            &session.principal(),
            form.command,
            BTreeMap::new(),
            None,
            None,
        )
        .await;
    let exec = match started {
        Ok(e) => e,
        Err(e) if !e.status().is_server_error() => {
            let page = render_detail(&state, &session, &id, Some(&e.to_string())).await?;
            return Ok((e.status(), page).into_response());
        }
        Err(e) => return Err(e.into()),
    };
    exec.wait_for(&[ExecutionStatus::Completed], EXEC_WAIT)
        .await;
    Ok(Redirect::to(&format!("/ui/devboxes/{id}#exec-{}", exec.id)).into_response())
}

pub async fn shutdown(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<crate::session::CsrfForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    state.store.get_devbox(&id).await?;
    state
        .devboxes
        .shutdown(&id, "api_shutdown", "shut down from the dashboard")
        .await?;
    Ok(Redirect::to(&format!("/ui/devboxes/{id}")).into_response())
}
