//! The trace-context headers Istio asks applications to propagate
//! (W3C trace context and baggage, Envoy's request id, Zipkin B3, Lightstep).

use axum::http::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

/// Headers copied, unchanged, from an inbound request to its outbound calls.
pub const TRACE_HEADERS: [HeaderName; 11] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("baggage"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("b3"),
    HeaderName::from_static("x-b3-traceid"),
    HeaderName::from_static("x-b3-spanid"),
    HeaderName::from_static("x-b3-parentspanid"),
    HeaderName::from_static("x-b3-sampled"),
    HeaderName::from_static("x-b3-flags"),
    HeaderName::from_static("x-ot-span-context"),
];

/// The trace headers present on one request, every value kept as received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceHeaders(HeaderMap);

impl TraceHeaders {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut picked = HeaderMap::new();
        for name in &TRACE_HEADERS {
            for value in headers.get_all(name) {
                picked.append(name.clone(), value.clone());
            }
        }
        Self(picked)
    }

    /// The headers to put on an outbound request.
    pub fn headers(&self) -> &HeaderMap {
        &self.0
    }

    /// `{name: value}` for the access log; repeated headers are joined with
    /// `,` as HTTP allows, non-UTF-8 bytes are replaced.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        for name in self.0.keys() {
            let joined = self
                .0
                .get_all(name)
                .iter()
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(",");
            object.insert(name.as_str().to_owned(), Value::String(joined));
        }
        Value::Object(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    #[test]
    fn keeps_only_trace_headers_with_every_value() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        headers.append("baggage", HeaderValue::from_static("a=1"));
        headers.append("baggage", HeaderValue::from_static("b=2"));
        headers.insert("authorization", HeaderValue::from_static("Bearer x"));

        let trace = TraceHeaders::from_headers(&headers);

        assert_eq!(trace.headers().len(), 3);
        assert!(trace.headers().get("authorization").is_none());
        assert_eq!(
            trace.to_json(),
            json!({"traceparent": "00-abc-def-01", "baggage": "a=1,b=2"})
        );
    }
}
