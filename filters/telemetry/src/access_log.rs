//! One JSON access-log line per request. It is built only from labels, sizes,
//! timings, trace ids and the decisions other meshwasm filters recorded: no
//! header values, no raw path or query string, so no credentials.

use crate::config::AccessLogConfig;
use crate::trace::within_ratio;
use meshwasm_shared::filter_state::{AuthzOutcome, BreakerOutcome, RoutingOutcome};
use serde::Serialize;

/// Value of the `type` field, to find these lines among Envoy's.
pub const LINE_TYPE: &str = "meshwasm_access";
/// Filter-state values longer than this are cut.
const MAX_DECISION_LEN: usize = 128;

/// Decisions other meshwasm filters stored in Envoy filter state.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Decisions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_lane: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_state: Option<String>,
}

impl Decisions {
    /// Builds the decisions from the other filters' records, keeping each
    /// value short and refusing anything that looks like a token.
    pub fn from_records(
        authz: Option<AuthzOutcome>,
        routing: Option<RoutingOutcome>,
        breaker: Option<BreakerOutcome>,
    ) -> Self {
        let routing = routing.unwrap_or_default();
        Self {
            authz: authz.and_then(|authz| decision_text(&authz.result)),
            routing_rule: routing.rule.as_deref().and_then(decision_text),
            routing_lane: routing.lane.as_deref().and_then(decision_text),
            breaker_state: breaker
                .and_then(|breaker| breaker.state)
                .as_deref()
                .and_then(decision_text),
        }
    }
}

fn decision_text(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    // A JWT (or any base64url JSON) never belongs in a decision.
    if text.contains("eyJ") {
        return Some("[redacted]".to_owned());
    }
    Some(text.chars().take(MAX_DECISION_LEN).collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessLogLine<'a> {
    #[serde(rename = "type")]
    pub line_type: &'static str,
    pub reporter: &'a str,
    pub source_workload: &'a str,
    pub destination_workload: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub code: i64,
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub tenant: &'a str,
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub trace_origin: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_cluster: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_address: Option<&'a str>,
    #[serde(flatten)]
    pub decisions: &'a Decisions,
}

impl AccessLogLine<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Whether this request is logged: sampled by trace id (so all hops of a
/// trace agree), errors always when configured.
pub fn should_log(config: &AccessLogConfig, trace_id: &str, code: Option<i64>) -> bool {
    if !config.enabled {
        return false;
    }
    let error = !matches!(code, Some(100..=499));
    (config.always_log_errors && error) || within_ratio(trace_id, config.sample_ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sample_ratio: f64, always_log_errors: bool) -> AccessLogConfig {
        AccessLogConfig {
            enabled: true,
            sample_ratio,
            always_log_errors,
        }
    }

    const LOW: &str = "4bf92f3577b34da60000000000000001";
    const HIGH: &str = "4bf92f3577b34da6ffffffffffffff00";

    #[test]
    fn sampling_follows_trace_id_and_errors() {
        assert!(should_log(&config(0.5, false), LOW, Some(200)));
        assert!(!should_log(&config(0.5, false), HIGH, Some(200)));
        assert!(should_log(&config(0.0, true), HIGH, Some(503)));
        assert!(should_log(&config(0.0, true), HIGH, None));
        assert!(!should_log(&config(0.0, true), HIGH, Some(404)));
        assert!(!should_log(&config(0.0, false), HIGH, Some(503)));
        let mut disabled = config(1.0, true);
        disabled.enabled = false;
        assert!(!should_log(&disabled, LOW, Some(500)));
    }

    #[test]
    fn line_has_every_field() {
        let decisions = Decisions::from_records(
            Some(AuthzOutcome {
                result: "allow".into(),
                principal: Some("https://issuer/alice".into()),
            }),
            Some(RoutingOutcome {
                rule: Some("canary-by-header".into()),
                lane: Some("canary".into()),
            }),
            Some(BreakerOutcome {
                key: "payment".into(),
                state: Some("closed".into()),
            }),
        );
        let line = AccessLogLine {
            line_type: LINE_TYPE,
            reporter: "inbound",
            source_workload: "order",
            destination_workload: "payment",
            method: "POST",
            route: "/payments",
            code: 201,
            duration_ms: 12.5,
            request_bytes: 300,
            response_bytes: 120,
            tenant: "acme",
            trace_id: LOW,
            span_id: "00f067aa0ba902b7",
            trace_origin: "w3c",
            upstream_cluster: Some("inbound|8080||"),
            upstream_address: Some("127.0.0.1:8080"),
            decisions: &decisions,
        };
        let value: serde_json::Value = serde_json::from_str(&line.to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "meshwasm_access", "reporter": "inbound", "source_workload": "order",
                "destination_workload": "payment", "method": "POST", "route": "/payments",
                "code": 201, "duration_ms": 12.5, "request_bytes": 300, "response_bytes": 120,
                "tenant": "acme", "trace_id": LOW, "span_id": "00f067aa0ba902b7",
                "trace_origin": "w3c", "upstream_cluster": "inbound|8080||",
                "upstream_address": "127.0.0.1:8080", "authz": "allow",
                "routing_rule": "canary-by-header", "routing_lane": "canary", "breaker_state": "closed"
            })
        );
    }

    #[test]
    fn absent_decisions_are_left_out_and_tokens_redacted() {
        let decisions = Decisions::from_records(
            Some(AuthzOutcome {
                result: "  ".into(),
                principal: None,
            }),
            Some(RoutingOutcome {
                rule: None,
                lane: Some("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.sig".into()),
            }),
            Some(BreakerOutcome {
                key: "payment".into(),
                state: Some("x".repeat(500).into()),
            }),
        );
        assert_eq!(decisions.authz, None);
        assert_eq!(decisions.routing_rule, None);
        assert_eq!(decisions.routing_lane.as_deref(), Some("[redacted]"));
        assert_eq!(decisions.breaker_state.as_ref().map(String::len), Some(128));
        let json = serde_json::to_string(&decisions).unwrap();
        assert!(!json.contains("authz") && !json.contains("eyJ"), "{json}");
    }
}
