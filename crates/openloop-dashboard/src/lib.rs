//! The Openloop web dashboard, served by `openloop serve` under `/ui/`.
//!
//! Pages are rendered on the server (maud templates, type-checked at compile time, escaped by
//! default); one small script (`assets/app.js`) makes parts of them live over Server-Sent
//! Events. Everything is embedded in the binary: no Node toolchain, no build step.
//!
//! # Layout
//! - [`session`]: sign-in with an API key, the session cookie, CSRF tokens, sign-out.
//! - [`layout`]: the page shell (navigation bar) and view helpers (times, statuses, JSON).
//! - [`error`]: every failure as an HTML page with the right status.
//! - [`pages`]: one module per page family (deployments, functions, invocations, devboxes,
//!   keys, repositories); handlers read through `openloop-api`'s services and store.
//! - [`live`]: the event streams pages follow (log tails, live tables).
//! - [`schema_form`]: a form generated from a function's request schema, and back to JSON.
//! - [`flash`]: one-time messages across a redirect (a new secret, shown once).
//! - [`assets`]: the stylesheet and the script.
//!
//! The dashboard holds no state of its own beyond sessions (in the store): it is a view of the
//! same services the JSON API uses, so the two never disagree.

pub mod assets;
pub mod error;
pub mod flash;
pub mod layout;
pub mod live;
pub mod pages;
pub mod schema_form;
pub mod session;

use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;
use openloop_api::state::AppState;

/// Every dashboard route, with the state applied; merged into the server's router.
pub fn router(state: AppState) -> Router {
    use pages::{deployments, devboxes, functions, invocations, keys, repositories};
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/invocations") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/invocations") }))
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/assets/{name}", get(assets::serve))
        .route(
            "/ui/deployments",
            get(deployments::list).post(deployments::create),
        )
        .route("/ui/deployments/rows", get(deployments::rows))
        .route("/ui/deployments/live", get(live::deployments_changed))
        .route("/ui/deployments/{id}", get(deployments::detail))
        .route("/ui/deployments/{id}/events", get(live::deployment_log))
        .route("/ui/projects", get(functions::projects))
        .route("/ui/projects/{project}", get(functions::project))
        .route(
            "/ui/projects/{project}/functions/{function}/invoke",
            post(functions::invoke),
        )
        .route("/ui/invocations", get(invocations::list))
        .route("/ui/invocations/rows", get(invocations::rows))
        .route("/ui/invocations/live", get(live::invocations_changed))
        .route("/ui/invocations/{id}", get(invocations::detail))
        .route("/ui/invocations/{id}/events", get(live::invocation_log))
        .route("/ui/invocations/{id}/cancel", post(invocations::cancel))
        .route("/ui/devboxes", get(devboxes::list))
        .route("/ui/devboxes/{id}", get(devboxes::detail))
        .route("/ui/devboxes/{id}/exec", post(devboxes::exec))
        .route("/ui/devboxes/{id}/shutdown", post(devboxes::shutdown))
        .route("/ui/keys", get(keys::list).post(keys::create))
        .route("/ui/keys/{id}/revoke", post(keys::revoke))
        .route(
            "/ui/repositories",
            get(repositories::list).post(repositories::create),
        )
        .route("/ui/repositories/{id}/remove", post(repositories::remove))
        .route("/ui/{*rest}", get(error::not_found).post(error::not_found))
        .with_state(state)
}
