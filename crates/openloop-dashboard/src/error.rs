//! Failures as HTML pages. The status is the one the JSON API would answer; a 500 shows no
//! internal detail (it is logged instead).

use crate::layout;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use openloop_api::error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No valid session: to the sign-in page, then back to `next`.
    #[error("sign in first")]
    SignedOut { next: String },
    #[error("this form has expired or did not come from this dashboard; reload the page and submit it again")]
    Csrf,
}

impl From<openloop_store::StoreError> for UiError {
    fn from(e: openloop_store::StoreError) -> Self {
        UiError::Api(e.into())
    }
}

impl From<openloop_api::services::invocations::EngineError> for UiError {
    fn from(e: openloop_api::services::invocations::EngineError) -> Self {
        UiError::Api(e.into())
    }
}

pub type UiResult<T> = Result<T, UiError>;

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::SignedOut { next } => {
                let q = serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default();
                Redirect::to(&format!("/ui/login?{q}")).into_response()
            }
            UiError::Csrf => error_page(StatusCode::FORBIDDEN, &UiError::Csrf.to_string()),
            UiError::Api(e) => {
                let message = e.to_string();
                let status = e.status();
                if status.is_server_error() {
                    tracing::error!(error = %message, "dashboard request failed");
                    error_page(
                        status,
                        "the server could not complete this request; the server log has the details",
                    )
                } else {
                    error_page(status, &message)
                }
            }
        }
    }
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        main.narrow {
            h1 { (status.as_u16()) " " (title) }
            p.error role="alert" { (message) }
            p { a href="/ui/" { "Back to the dashboard" } }
        }
    };
    (status, Html(layout::bare(title, body).into_string())).into_response()
}

/// Any other path under `/ui/`: a page, not the API's JSON.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        &format!("there is no dashboard page at {}", uri.path()),
    )
}
