//! `/ui/invocations`: every run, filtered and paged by keyset, live; one run in full.

use super::PAGE_SIZE;
use crate::error::UiResult;
use crate::layout::{self, Nav};
use crate::session::{CsrfForm, Session};
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use openloop_api::error::ApiError;
use openloop_api::model::InvocationStatus;
use openloop_api::services::invocations::EngineError;
use openloop_api::state::AppState;
use openloop_store::invocations::{Invocation, InvocationFilter};
use serde::Deserialize;
use serde_json::Value;

/// Log lines rendered with the page; a running invocation's later lines arrive live.
const LOG_LINES: i64 = 5000;

const STATUSES: [InvocationStatus; 5] = [
    InvocationStatus::Queued,
    InvocationStatus::Running,
    InvocationStatus::Success,
    InvocationStatus::Failure,
    InvocationStatus::Canceled,
];

#[derive(Deserialize, Default, Clone)]
pub struct ListQuery {
    project: Option<String>,
    function: Option<String>,
    status: Option<String>,
    before: Option<String>,
}

impl ListQuery {
    fn some(v: &Option<String>) -> Option<String> {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    fn filter(&self) -> UiResult<InvocationFilter> {
        let status = Self::some(&self.status);
        if let Some(s) = &status {
            if !STATUSES.iter().any(|k| k.as_str() == s) {
                return Err(ApiError::BadRequest(format!(
                    "unknown status {s:?}; use queued, running, success, failure or canceled"
                ))
                .into());
            }
        }
        Ok(InvocationFilter {
            status,
            project_name: Self::some(&self.project),
            function_name: Self::some(&self.function),
            before_id: Self::some(&self.before),
            limit: PAGE_SIZE + 1,
        })
    }

    fn query_string(&self) -> String {
        let f = [
            ("project", Self::some(&self.project)),
            ("function", Self::some(&self.function)),
            ("status", Self::some(&self.status)),
        ];
        let q: Vec<(&str, String)> = f
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        serde_urlencoded::to_string(q).unwrap_or_default()
    }
}

/// One page of rows and, when there are more, the id to continue before.
async fn page(state: &AppState, q: &ListQuery) -> UiResult<(Vec<Invocation>, Option<String>)> {
    let mut rows = state.store.list_invocations(&q.filter()?).await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let next = more.then(|| rows.last().map(|r| r.id.clone())).flatten();
    Ok((rows, next))
}

fn rows_markup(rows: &[Invocation]) -> Markup {
    html! {
        @if rows.is_empty() {
            tr { td colspan="6" { (layout::empty("No invocations match.")) } }
        }
        @for inv in rows {
            tr {
                td { a href={ "/ui/invocations/" (inv.id) } { (layout::short_id(&inv.id)) } }
                td { a href={ "/ui/projects/" (inv.project_name) } { (inv.project_name) } " / " (inv.function_name) }
                td { (layout::status(&inv.status)) }
                td { (layout::time(inv.created_at_ms)) }
                td { (layout::duration(inv.started_at_ms, inv.ended_at_ms)) }
                td { @if let Some(p) = &inv.parent_invocation_id { a href={ "/ui/invocations/" (p) } { (layout::short_id(p)) } } }
            }
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> UiResult<Html<String>> {
    let (rows, next) = page(&state, &q).await?;
    let projects = state.store.active_deployments().await?;
    let chosen = |v: &Option<String>, x: &str| v.as_deref() == Some(x);
    let live = q.before.is_none();
    let qs = q.query_string();
    let body = html! {
        h1 { "Invocations" }
        form.row method="get" action="/ui/invocations" {
            label { "Project"
                select name="project" {
                    option value="" { "any" }
                    @for d in &projects {
                        option value=(d.project_name) selected[chosen(&q.project, &d.project_name)] { (d.project_name) }
                    }
                }
            }
            label { "Function" input type="text" name="function" value=(q.function.clone().unwrap_or_default()) placeholder="any"; }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES {
                        option value=(s.as_str()) selected[chosen(&q.status, s.as_str())] { (s.as_str()) }
                    }
                }
            }
            button type="submit" { "Filter" }
            @if !qs.is_empty() { a.button href="/ui/invocations" { "Clear" } }
        }
        h2 { @if live { "Newest first, live" } @else { "Older invocations" } }
        table #invocations {
            thead { tr { th { "Id" } th { "Function" } th { "Status" } th { "Created" } th { "Duration" } th { "Parent" } } }
            @if live {
                tbody #rows data-live-events="/ui/invocations/live" data-live-src={ "/ui/invocations/rows?" (qs) } { (rows_markup(&rows)) }
            } @else {
                tbody #rows { (rows_markup(&rows)) }
            }
        }
        div.pager {
            @if !live { a.button href={ "/ui/invocations?" (qs) } { "← Newest" } }
            (layout::older_link("/ui/invocations", &[
                ("project", q.project.as_deref()),
                ("function", q.function.as_deref()),
                ("status", q.status.as_deref()),
            ], next.as_deref()))
        }
    };
    Ok(layout::page(
        &session,
        Nav::Invocations,
        "Invocations",
        body,
    ))
}

/// The table's rows alone, for the live refresh.
pub async fn rows(
    State(state): State<AppState>,
    _: Session,
    Query(q): Query<ListQuery>,
) -> UiResult<Html<String>> {
    let (rows, _) = page(&state, &q).await?;
    Ok(Html(rows_markup(&rows).into_string()))
}

fn parse(text: &Option<String>) -> Option<Value> {
    text.as_deref().and_then(|t| serde_json::from_str(t).ok())
}

pub async fn detail(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> UiResult<Html<String>> {
    let inv = state.store.get_invocation(&id).await?;
    let children = state.store.child_invocations(&id, 200).await?;
    let devboxes = state.store.devboxes_of_invocation(&id).await?;
    let logs = state.store.invocation_logs(&id, 0, LOG_LINES).await?;
    let last_seq = logs.last().map(|l| l.seq).unwrap_or(0);
    let finished = inv.is_finished();
    let error = parse(&inv.error);
    let body = html! {
        h1 { "Invocation " code { (inv.id) } " " (layout::live_status(&inv.status)) }
        @if !finished {
            form.inline method="post" action={ "/ui/invocations/" (inv.id) "/cancel" } data-confirm="Cancel this run?" {
                (layout::csrf(&session))
                button.danger type="submit" { "Cancel" }
            }
        }
        div.card {
            dl.facts {
                dt { "Function" } dd { a href={ "/ui/projects/" (inv.project_name) } { (inv.project_name) } " / " (inv.function_name) }
                dt { "Deployment" } dd { a href={ "/ui/deployments/" (inv.deployment_id) } { (layout::short_id(&inv.deployment_id)) } }
                dt { "Parent" } dd {
                    @match &inv.parent_invocation_id {
                        Some(p) => a href={ "/ui/invocations/" (p) } { (layout::short_id(p)) },
                        None => span.muted { "none (invoked over the API)" },
                    }
                }
            }
        }
        h2 { "Timeline" }
        table.timeline {
            thead { tr { th { "Step" } th { "At" } th { "After" } } }
            tbody {
                tr { td { (layout::status("queued")) } td { (layout::time(inv.created_at_ms)) } td { "—" } }
                @if let Some(s) = inv.started_at_ms {
                    tr { td { (layout::status("running")) } td { (layout::time(s)) } td { "waited " (layout::duration(Some(inv.created_at_ms), Some(s))) } }
                }
                @if let Some(e) = inv.ended_at_ms {
                    tr { td { (layout::status(&inv.status)) } td { (layout::time(e)) } td { "ran " (layout::duration(inv.started_at_ms.or(Some(inv.created_at_ms)), Some(e))) } }
                }
            }
        }
        div.grid2 {
            div {
                h2 { "Request" }
                (layout::json_text(&inv.request))
            }
            div {
                @if let Some(r) = parse(&inv.result) {
                    h2 { "Response" }
                    @if let Value::String(text) = &r {
                        // A string result reads as text (its line breaks kept).
                        pre.output.result { (text) }
                    } @else {
                        (layout::json(&r))
                    }
                } @else if let Some(e) = &error {
                    h2 { "Error" }
                    div.card.error-box {
                        p.error { strong { (e["type"].as_str().unwrap_or("Error")) } ": " (e["message"].as_str().unwrap_or("")) }
                        @if let Some(tb) = e["traceback"].as_str() { pre.output.traceback { (tb) } }
                    }
                } @else {
                    h2 { "Response" }
                    p.muted { "Not finished yet." }
                }
            }
        }
        h2 { "Logs" }
        @let tail = html! {
            @if logs.is_empty() { div.empty-log.muted { @if finished { "No output." } @else { "Waiting for output…" } } }
            @for l in &logs {
                div class={ "log " (l.stream) } {
                    (layout::format_utc(l.ts_ms).get(11..19).unwrap_or("")) " " (l.stream) " "
                    @if let Some(level) = &l.level { (level) " " }
                    (l.message)
                }
            }
        };
        @if finished {
            pre.logs #logs { (tail) }
            @if logs.len() as i64 == LOG_LINES {
                p.muted { "The first " (LOG_LINES) " lines; all of them: " code { "openloop logs " (inv.id) } }
            }
        } @else {
            pre.logs #logs data-log-events={ "/ui/invocations/" (inv.id) "/events?after=" (last_seq) } data-log-format="json" { (tail) }
        }
        h2 { "Child invocations" }
        @if children.is_empty() { (layout::empty("It invoked no other function.")) } @else {
            table { thead { tr { th { "Id" } th { "Function" } th { "Status" } th { "Created" } th { "Duration" } th {} } }
                tbody { (rows_markup(&children)) } }
        }
        h2 { "Devboxes it created" }
        @if devboxes.is_empty() { (layout::empty("None.")) } @else {
            table { thead { tr { th { "Id" } th { "Name" } th { "Status" } th { "Created" } } }
                tbody {
                    @for d in &devboxes {
                        tr {
                            td { a href={ "/ui/devboxes/" (d.id) } { (layout::short_id(&d.id)) } }
                            td { (d.name.clone().unwrap_or_default()) }
                            td { (layout::status(&d.status)) }
                            td { (layout::time(d.created_at_ms)) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(&session, Nav::Invocations, "Invocation", body))
}

pub async fn cancel(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> UiResult<Response> {
    session.check_csrf(&form.csrf)?;
    match state.invocations.cancel(&id).await {
        // It finished while the page was open: the page shows how.
        Ok(_) | Err(EngineError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Redirect::to(&format!("/ui/invocations/{id}")).into_response())
}
