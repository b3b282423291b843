//! JSON error responses.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// An error answered as JSON: `{"error": "..."}` or a richer object.
#[derive(Debug, Clone)]
pub struct ApiError(Box<Parts>);

#[derive(Debug, Clone)]
struct Parts {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl ApiError {
    /// An error with a full JSON body.
    pub fn new(status: StatusCode, body: Value) -> Self {
        Self(Box::new(Parts {
            status,
            headers: HeaderMap::new(),
            body,
        }))
    }

    /// An error whose body is `{"error": message}`.
    pub fn message(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, json!({ "error": message.into() }))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::message(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::message(StatusCode::NOT_FOUND, message)
    }

    /// Adds response headers (for example `retry-after` copied from upstream).
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.0.headers.extend(headers);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn body(&self) -> &Value {
        &self.0.body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let Parts {
            status,
            headers,
            body,
        } = *self.0;
        (status, headers, Json(body)).into_response()
    }
}
