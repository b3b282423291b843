//! RFC 9457 `application/problem+json` responses sent by the filters instead
//! of forwarding a request.

use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// One rejection. `kind` is a stable slug (`token-expired`) that becomes the
/// problem `type` URI; clients match on it, so it never changes meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    pub fn new(
        status: u16,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
        }
    }

    pub fn type_uri(&self) -> String {
        format!("urn:meshwasm:problem:{}", self.kind)
    }

    pub fn body(&self) -> Vec<u8> {
        let body = Body {
            type_uri: self.type_uri(),
            title: self.title,
            status: self.status,
            detail: &self.detail,
        };
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Glue: answers the current HTTP request with this problem and the given
    /// extra headers; the request goes no further.
    pub fn send(&self, extra_headers: &[(&str, &str)]) {
        let mut headers = vec![("content-type", CONTENT_TYPE)];
        headers.extend_from_slice(extra_headers);
        let body = self.body();
        if let Err(status) =
            proxy_wasm::hostcalls::send_http_response(u32::from(self.status), headers, Some(&body))
        {
            log::error!("could not send {} response: {status:?}", self.status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_rfc9457_json() {
        let problem = Problem::new(401, "token-expired", "Token expired", "exp is in the past");
        let body: serde_json::Value = serde_json::from_slice(&problem.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "urn:meshwasm:problem:token-expired",
                "title": "Token expired",
                "status": 401,
                "detail": "exp is in the past",
            })
        );
    }

    #[test]
    fn detail_is_escaped() {
        let problem = Problem::new(400, "bad", "Bad", "quote \" and newline \n");
        let body: serde_json::Value = serde_json::from_slice(&problem.body()).unwrap();
        assert_eq!(body["detail"], "quote \" and newline \n");
    }
}
