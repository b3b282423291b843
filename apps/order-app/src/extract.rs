//! A JSON body extractor whose every rejection is a 400 JSON error naming the
//! offending field (axum's own `Json` answers 415/422 with plain text).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::ApiError;

/// The request body parsed as JSON into `T`.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                ApiError::message(
                    rejection.status(),
                    format!("could not read request body: {}", rejection.body_text()),
                )
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses `bytes` as one JSON value of type `T`, with the failing field's
/// path in the message (`invalid JSON body at `quantity`: ...`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "request body is empty; expected a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid JSON body at `{path}`: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|err| ApiError::bad_request(format!("invalid JSON body: {err}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        sku: String,
        quantity: i64,
    }

    fn error_of(body: &str) -> String {
        let err = parse_json::<Item>(body.as_bytes()).unwrap_err();
        assert_eq!(err.status(), 400);
        err.body()["error"].as_str().unwrap().to_owned()
    }

    #[test]
    fn names_the_field_with_the_wrong_type() {
        let message = error_of(r#"{"sku": "a", "quantity": "two"}"#);
        assert!(message.contains("`quantity`"), "{message}");
    }

    #[test]
    fn names_a_missing_field() {
        let message = error_of(r#"{"sku": "a"}"#);
        assert!(message.contains("missing field `quantity`"), "{message}");
    }

    #[test]
    fn rejects_empty_and_trailing_input() {
        assert!(error_of("  ").contains("empty"));
        assert!(error_of(r#"{"sku":"a","quantity":1} x"#).contains("trailing"));
        assert!(error_of("{not json").starts_with("invalid JSON body"));
    }
}
