//! The one place where errors become HTTP responses: `{"error": {"code", "message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code: `bad_request`, `validation_failed`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `timeout`, `conflict`, `call_depth_exceeded`,
    /// `payload_too_large`, `quota_exceeded`, `unavailable`, `bad_gateway` or `internal`.
    #[schema(example = "not_found")]
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: message.into(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A run invoked a function past the node's call-depth limit.
    #[error("call depth limit exceeded: {target} would run at call depth {depth}; the limit is {limit} (`openloop serve --max-call-depth`)")]
    CallDepthExceeded {
        /// `project/function` that was invoked.
        target: String,
        depth: u32,
        limit: u32,
    },
    #[error("{0}")]
    QuotaExceeded(String),
    /// A stored secret could not be opened with this server's secrets key (a different key,
    /// or the record was altered). Never carries the value.
    #[error("secret '{name}' cannot be decrypted: {reason}")]
    SecretUnreadable { name: String, reason: String },
    #[error("{0}")]
    Unavailable(String),
    /// A tunnel could not reach its port inside the devbox.
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Validation(_) => (StatusCode::BAD_REQUEST, "validation_failed"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::CallDepthExceeded { .. } => (StatusCode::CONFLICT, "call_depth_exceeded"),
            ApiError::QuotaExceeded(_) => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
            ApiError::SecretUnreadable { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "secret_unreadable")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        // A tunnel's port with nothing listening is the devbox's business, not a server fault.
        if status.is_server_error() && status != StatusCode::BAD_GATEWAY {
            tracing::error!(error = %self, "request failed");
        }
        (status, Json(ErrorBody::new(code, self.to_string()))).into_response()
    }
}

impl From<openloop_store::StoreError> for ApiError {
    fn from(e: openloop_store::StoreError) -> Self {
        match e {
            openloop_store::StoreError::NotFound(what) => {
                ApiError::NotFound(format!("{what} not found"))
            }
            openloop_store::StoreError::AlreadyExists(what) => {
                ApiError::Conflict(format!("{what} already exists"))
            }
            // The database's own text stays in the server log: it can name tables, queries
            // and connection details.
            other => {
                tracing::error!(error = %other, "store operation failed");
                ApiError::Internal(
                    "the database operation failed; the server log has the details".into(),
                )
            }
        }
    }
}

impl From<openloop_sandbox::SandboxError> for ApiError {
    fn from(e: openloop_sandbox::SandboxError) -> Self {
        use openloop_sandbox::SandboxError as S;
        match e {
            S::Agent { ref code, .. } if code == "not_found" => ApiError::NotFound(e.to_string()),
            S::Agent { ref code, .. } if code == "too_large" => {
                ApiError::PayloadTooLarge(e.to_string())
            }
            S::Agent { ref code, .. } if code == "invalid" || code == "is_directory" => {
                ApiError::BadRequest(e.to_string())
            }
            S::Agent { ref code, .. } if code == "permission_denied" => {
                ApiError::Forbidden(e.to_string())
            }
            S::NotRunning(_) => ApiError::Conflict(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
