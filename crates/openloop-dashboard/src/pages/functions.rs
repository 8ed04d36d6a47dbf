//! `/ui/projects`: the deployed projects; `/ui/projects/{project}`: its functions with their
//! schemas and a form per function, generated from its request schema, that invokes it.

use crate::error::UiResult;
use crate::layout::{self, Nav};
use crate::schema_form;
use crate::session::Session;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use openloop_api::error::ApiError;
use openloop_api::services::invocations::{manifest_of, Reply};
use openloop_api::state::AppState;
use std::collections::HashMap;

pub async fn projects(State(state): State<AppState>, session: Session) -> UiResult<Html<String>> {
    let live = state.store.active_deployments().await?;
    let body = html! {
        h1 { "Functions" }
        @if live.is_empty() {
            (layout::empty("No project is deployed yet: deploy one on the Deployments page."))
        } @else {
            table {
                thead { tr { th { "Project" } th { "Functions" } th { "Live deployment" } th { "Deployed" } } }
                tbody {
                    @for d in &live {
                        @let names = manifest_of(d).map(|m| m.functions.into_iter().map(|f| f.name).collect::<Vec<_>>()).unwrap_or_default();
                        tr {
                            td { a href={ "/ui/projects/" (d.project_name) } { (d.project_name) } }
                            td { @for n in &names { code { (n) } " " } }
                            td { a href={ "/ui/deployments/" (d.id) } { (layout::short_id(&d.id)) } }
                            td { (layout::time_opt(d.ended_at_ms)) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(&session, Nav::Functions, "Functions", body))
}

/// The project page; `submitted` re-fills one function's form after a rejected invocation.
async fn render_project(
    state: &AppState,
    session: &Session,
    project: &str,
    submitted: Option<(&str, &HashMap<String, String>, &str)>,
) -> UiResult<Html<String>> {
    let dep = state
        .store
        .active_deployment(project)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "project '{project}' has no live deployment; deploy it on the Deployments page"
            ))
        })?;
    let manifest = manifest_of(&dep)?;
    let none = HashMap::new();
    let body = html! {
        h1 { "Project " code { (project) } }
        p.muted {
            "Live deployment " a href={ "/ui/deployments/" (dep.id) } { (layout::short_id(&dep.id)) }
            " · " a href={ "/ui/invocations?project=" (project) } { "its invocations" }
        }
        @for f in &manifest.functions {
            @let fields = schema_form::fields(&f.request_schema);
            @let (values, error) = match submitted {
                Some((name, v, e)) if name == f.name => (v, Some(e)),
                _ => (&none, None),
            };
            section.card id={ "fn-" (f.name) } {
                h2 { code { (f.name) } @if f.is_async { " " span.badge { "async" } } @if f.retryable { " " span.badge { "retryable" } } }
                div.grid2 {
                    div {
                        h3 { "Invoke" }
                        @if let Some(e) = error { p.error role="alert" { (e) } }
                        form.stack method="post" action={ "/ui/projects/" (project) "/functions/" (f.name) "/invoke" } {
                            (layout::csrf(session))
                            @if fields.is_empty() { p.muted { "This function takes no parameters." } }
                            (schema_form::render(&fields, values))
                            div { button type="submit" { "Invoke " (f.name) } }
                        }
                    }
                    div {
                        h3 { "Request schema" }
                        (layout::json(&f.request_schema))
                        h3 { "Response schema" }
                        (layout::json(&f.response_schema))
                    }
                }
            }
        }
    };
    Ok(layout::page(session, Nav::Functions, project, body))
}

pub async fn project(
    State(state): State<AppState>,
    session: Session,
    Path(project): Path<String>,
) -> UiResult<Html<String>> {
    render_project(&state, &session, &project, None).await
}

/// Invoke from the generated form, then show the run (its result arrives live there).
pub async fn invoke(
    State(state): State<AppState>,
    session: Session,
    Path((project, function)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> UiResult<Response> {
    session.check_csrf(form.get("csrf").map(String::as_str).unwrap_or(""))?;
    let dep = state
        .store
        .active_deployment(&project)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("project '{project}' has no live deployment")))?;
    let manifest = manifest_of(&dep)?;
    let spec = manifest.function(&function).ok_or_else(|| {
        ApiError::NotFound(format!(
            "function '{function}' not found in project '{project}'"
        ))
    })?;
    let fields = schema_form::fields(&spec.request_schema);
    let outcome = match schema_form::to_request(&fields, &form) {
        Ok(request) => state
            .invocations
            .submit(&project, &function, request, None, Reply::Recorded)
            .await
            .map_err(ApiError::from),
        Err(message) => Err(ApiError::Validation(message)),
    };
    match outcome {
        Ok(inv) => Ok(Redirect::to(&format!("/ui/invocations/{}", inv.id)).into_response()),
        // The form again, filled in, with the reason above it.
        Err(e) if !e.status().is_server_error() => {
            let message = e.to_string();
            let page = render_project(
                &state,
                &session,
                &project,
                Some((&function, &form, &message)),
            )
            .await?;
            Ok((e.status(), page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}
