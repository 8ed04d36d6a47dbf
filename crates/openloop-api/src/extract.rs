//! Request extractors whose rejections use the API's error shape.

use crate::error::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// Like `axum::Json`, but malformed bodies give 400, oversized ones 413, as JSON errors.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge("the request body is over the size limit".into());
    }
    match rej {
        JsonRejection::MissingJsonContentType(_) => ApiError::BadRequest(
            "send the body as JSON with `Content-Type: application/json`".into(),
        ),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::BadRequest(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => {
            ApiError::BadRequest(format!("invalid request body: {}", e.body_text()))
        }
        other => {
            if other.body_text().contains("length limit") {
                ApiError::PayloadTooLarge("the request body is over the size limit".into())
            } else {
                ApiError::BadRequest(other.body_text())
            }
        }
    }
}
