//! Request-side decisions without the host: which policy applies, which
//! breaker key a request belongs to, and whether a finished call failed.

use crate::breaker::Spec;
use crate::config::{Config, Failure, KeyPart, Policy};
use meshwasm_shared::claims;
use std::rc::Rc;

/// Longest key part kept; longer values are cut (keys stay bounded in size).
const MAX_PART_LEN: usize = 128;
/// Stands for a key part the request does not have.
const MISSING: &str = "-";

/// A policy with its breaker limits precomputed.
#[derive(Debug, Clone)]
pub struct Active {
    pub policy: Policy,
    pub spec: Spec,
}

impl Active {
    fn new(policy: &Policy) -> Self {
        Self {
            spec: Spec::from_policy(policy),
            policy: policy.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policies {
    ordered: Vec<Rc<Active>>,
    default: Option<Rc<Active>>,
}

/// The request facts policy matching looks at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    /// Without the query string.
    pub path: &'a str,
}

impl Policies {
    pub fn new(config: &Config) -> Self {
        Self {
            ordered: config
                .policies
                .iter()
                .map(|policy| Rc::new(Active::new(policy)))
                .collect(),
            default: config
                .default_policy
                .as_ref()
                .map(|policy| Rc::new(Active::new(policy))),
        }
    }

    /// The policy for a request and the route it matched: the matching path
    /// pattern, or the path itself when the policy has no path patterns.
    pub fn select(&self, request: &Request<'_>) -> Option<(Rc<Active>, String)> {
        for active in &self.ordered {
            if let Some(route) = matches(&active.policy, request) {
                return Some((Rc::clone(active), route));
            }
        }
        self.default
            .as_ref()
            .map(|active| (Rc::clone(active), request.path.to_owned()))
    }
}

/// `Some(route)` when every condition of the policy's `match` holds.
fn matches(policy: &Policy, request: &Request<'_>) -> Option<String> {
    let matcher = &policy.matcher;
    if !matcher.methods.is_empty() && !matcher.methods.iter().any(|m| m == request.method) {
        return None;
    }
    if !matcher.hosts.is_empty()
        && !matcher
            .hosts
            .iter()
            .any(|pattern| pattern.matches(request.authority))
    {
        return None;
    }
    if matcher.paths.is_empty() {
        return Some(request.path.to_owned());
    }
    matcher
        .paths
        .iter()
        .find(|pattern| pattern.0.matches(request.path))
        .map(|pattern| pattern.0.to_string())
}

/// The facts a key part may need, fetched lazily by the glue.
pub trait KeySource {
    fn authority(&self) -> Option<String>;
    fn cluster(&self) -> Option<String>;
    fn header(&self, name: &str) -> Option<String>;
    /// The verified claims JSON the authz filter left in filter state.
    fn claims(&self) -> Option<Vec<u8>>;
}

/// `policy|part|part…`: values sanitized (no separators or control
/// characters) and cut to a bounded length; a missing value reads `-`.
pub fn breaker_key(active: &Active, route: &str, source: &impl KeySource) -> String {
    let mut claims: Option<Option<serde_json::Value>> = None;
    let mut key = active.policy.name.clone();
    for part in &active.policy.key {
        let value = match part {
            KeyPart::Authority => source.authority(),
            KeyPart::Cluster => source.cluster().or_else(|| source.authority()),
            KeyPart::Route => Some(route.to_owned()),
            KeyPart::Header { name } => source.header(name),
            KeyPart::Claim { name } => claims
                .get_or_insert_with(|| {
                    source
                        .claims()
                        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                })
                .as_ref()
                .and_then(|claims| claims::lookup_text(claims, name)),
        };
        key.push('|');
        push_sanitized(&mut key, value.as_deref().unwrap_or(MISSING));
    }
    key
}

fn push_sanitized(key: &mut String, value: &str) {
    let value = if value.is_empty() { MISSING } else { value };
    for (taken, c) in value.chars().enumerate() {
        if taken >= MAX_PART_LEN {
            break;
        }
        key.push(if c == '|' || c.is_control() { '_' } else { c });
    }
}

/// What Envoy says about a finished call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Response<'a> {
    /// `:status` / `response.code`; `None` when no response arrived.
    pub status: Option<u16>,
    /// `response.flags`: Envoy's response-flag bit set.
    pub flags: u64,
    /// `response.code_details`, e.g. `upstream_reset_before_response_started{…}`.
    pub code_details: Option<&'a str>,
}

/// Envoy response-flag bits (`StreamInfo::CoreResponseFlag` order) that mean
/// the upstream could not be reached or broke the call.
pub mod flags {
    pub const NO_HEALTHY_UPSTREAM: u64 = 1 << 1; // UH
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 1 << 2; // UT
    pub const UPSTREAM_REMOTE_RESET: u64 = 1 << 4; // UR
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 1 << 5; // UF
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 1 << 6; // UC
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 1 << 14; // DC
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 1 << 15; // URX
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 1 << 23; // UPE

    pub const UPSTREAM_FAILURES: u64 = NO_HEALTHY_UPSTREAM
        | UPSTREAM_REQUEST_TIMEOUT
        | UPSTREAM_REMOTE_RESET
        | UPSTREAM_CONNECTION_FAILURE
        | UPSTREAM_CONNECTION_TERMINATION
        | UPSTREAM_RETRY_LIMIT_EXCEEDED
        | UPSTREAM_PROTOCOL_ERROR;
}

/// Whether `response.flags` and `response.code_details` are worth reading
/// when response headers arrive with `status`: until then Envoy reports
/// upstream failures (resets, timeouts, no healthy upstream) only as local
/// 5xx replies, so below 500 the status alone decides and the glue saves two
/// host calls per request. (A reset cutting a body comes later, in `on_log`.)
pub fn failure_details_matter_at_headers(status: Option<u16>) -> bool {
    status.is_none_or(|status| status == 0 || status >= 500)
}

/// Whether a call failed under the policy's rules, or `None` when it says
/// nothing about the upstream (the client went away before any response).
pub fn classify(failure: &Failure, response: &Response<'_>) -> Option<bool> {
    let connection_failure = response.flags & flags::UPSTREAM_FAILURES != 0
        || response.code_details.is_some_and(|details| {
            details.starts_with("upstream_reset")
                || details == "upstream_response_timeout"
                || details == "no_healthy_upstream"
        });
    let Some(status) = response.status.filter(|status| *status != 0) else {
        return if connection_failure {
            Some(failure.connection_failures)
        } else {
            None
        };
    };
    let failed = (failure.connection_failures && connection_failure)
        || (failure.server_errors && (500..=599).contains(&status))
        || (failure.gateway_errors && matches!(status, 502..=504))
        || failure.status_codes.contains(&status);
    Some(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwasm_shared::config::parse;

    fn policies(json: &str) -> Policies {
        Policies::new(&parse::<Config>(Some(json.as_bytes())).unwrap())
    }

    fn request<'a>(method: &'a str, authority: &'a str, path: &'a str) -> Request<'a> {
        Request {
            method,
            authority,
            path,
        }
    }

    #[test]
    fn first_matching_policy_wins_then_default() {
        let policies = policies(
            r#"{"policies":[
                {"name":"charge","match":{"hosts":["payment*"],"paths":["/charge"],"methods":["POST"]}},
                {"name":"orders","match":{"paths":["/orders/{id}"]}},
                {"name":"payment","match":{"hosts":["payment"]}}]}"#,
        );
        let pick = |method, authority, path| {
            let (active, route) = policies.select(&request(method, authority, path)).unwrap();
            (active.policy.name.clone(), route)
        };
        assert_eq!(
            pick("POST", "payment:8080", "/charge"),
            ("charge".into(), "/charge".into())
        );
        assert_eq!(
            pick("GET", "payment:8080", "/charge"),
            ("payment".into(), "/charge".into())
        );
        assert_eq!(
            pick("GET", "inventory", "/orders/7"),
            ("orders".into(), "/orders/{*}".into())
        );
        assert_eq!(
            pick("GET", "inventory", "/stock"),
            ("default".into(), "/stock".into())
        );
        let none = policies_without_default();
        assert!(none.select(&request("GET", "x", "/")).is_none());
    }

    fn policies_without_default() -> Policies {
        policies(r#"{"default_policy":null}"#)
    }

    struct Facts {
        cluster: Option<&'static str>,
        claims: Option<&'static str>,
    }

    impl KeySource for Facts {
        fn authority(&self) -> Option<String> {
            Some("payment:8080".into())
        }
        fn cluster(&self) -> Option<String> {
            self.cluster.map(str::to_owned)
        }
        fn header(&self, name: &str) -> Option<String> {
            (name == "x-tenant").then(|| "acme|evil\nco".into())
        }
        fn claims(&self) -> Option<Vec<u8>> {
            self.claims.map(|c| c.as_bytes().to_vec())
        }
    }

    #[test]
    fn keys_combine_parts_sanitized_with_missing_marked() {
        let policies = policies(
            r#"{"policies":[{"name":"p","key":[
                {"source":"authority"},{"source":"cluster"},{"source":"route"},
                {"source":"header","name":"x-tenant"},{"source":"header","name":"x-none"},
                {"source":"claim","name":"org.id"},{"source":"claim","name":"tier"}]}]}"#,
        );
        let (active, route) = policies
            .select(&request("GET", "payment:8080", "/a"))
            .unwrap();
        let facts = Facts {
            cluster: Some("outbound|8080||payment"),
            claims: Some(r#"{"org":{"id":42},"tier":["gold"]}"#),
        };
        assert_eq!(
            breaker_key(&active, &route, &facts),
            "p|payment:8080|outbound_8080__payment|/a|acme_evil_co|-|42|-"
        );
        let bare = Facts {
            cluster: None,
            claims: Some("not json"),
        };
        assert_eq!(
            breaker_key(&active, &route, &bare),
            "p|payment:8080|payment:8080|/a|acme_evil_co|-|-|-"
        );
    }

    #[test]
    fn claim_parts_read_url_named_and_boolean_claims() {
        let policies = policies(
            r#"{"policies":[{"name":"p","key":[
                {"source":"claim","name":"https://x.io/tenant"},{"source":"claim","name":"beta"}]}]}"#,
        );
        let (active, route) = policies.select(&request("GET", "payment", "/a")).unwrap();
        let facts = Facts {
            cluster: None,
            claims: Some(r#"{"https://x.io/tenant":"acme","beta":true}"#),
        };
        assert_eq!(breaker_key(&active, &route, &facts), "p|acme|true");
    }

    #[test]
    fn long_values_are_cut() {
        let mut key = String::new();
        push_sanitized(&mut key, &"é".repeat(500));
        assert_eq!(key.chars().count(), MAX_PART_LEN);
    }

    fn failure(json: &str) -> Failure {
        serde_json::from_str(json).unwrap()
    }

    fn status(code: u16) -> Response<'static> {
        Response {
            status: Some(code),
            ..Response::default()
        }
    }

    #[test]
    fn default_rules_count_5xx_and_connection_failures() {
        let rules = failure("{}");
        assert_eq!(classify(&rules, &status(200)), Some(false));
        assert_eq!(classify(&rules, &status(404)), Some(false));
        assert_eq!(classify(&rules, &status(500)), Some(true));
        assert_eq!(classify(&rules, &status(503)), Some(true));
        // A 200 whose body was cut by an upstream reset.
        let reset = Response {
            status: Some(200),
            flags: flags::UPSTREAM_REMOTE_RESET,
            code_details: None,
        };
        assert_eq!(classify(&rules, &reset), Some(true));
    }

    #[test]
    fn gateway_and_listed_codes_without_server_errors() {
        let rules = failure(r#"{"server_errors":false,"status_codes":[429]}"#);
        assert_eq!(classify(&rules, &status(500)), Some(false));
        assert_eq!(classify(&rules, &status(502)), Some(true));
        assert_eq!(classify(&rules, &status(504)), Some(true));
        assert_eq!(classify(&rules, &status(429)), Some(true));
        let rules =
            failure(r#"{"server_errors":false,"gateway_errors":false,"status_codes":[500]}"#);
        assert_eq!(classify(&rules, &status(503)), Some(false));
        assert_eq!(classify(&rules, &status(500)), Some(true));
    }

    #[test]
    fn connection_failures_from_flags_or_details() {
        let rules = failure(r#"{"server_errors":false,"gateway_errors":false}"#);
        let connect_failure = Response {
            status: Some(503),
            flags: flags::UPSTREAM_CONNECTION_FAILURE,
            code_details: Some("upstream_reset_before_response_started{connection_failure}"),
        };
        assert_eq!(classify(&rules, &connect_failure), Some(true));
        let by_details = Response {
            status: Some(503),
            flags: 0,
            code_details: Some("upstream_reset_before_response_started{remote_reset}"),
        };
        assert_eq!(classify(&rules, &by_details), Some(true));
        let no_response = Response {
            status: None,
            flags: flags::UPSTREAM_CONNECTION_TERMINATION,
            code_details: None,
        };
        assert_eq!(classify(&rules, &no_response), Some(true));
        let ignored = failure(r#"{"connection_failures":false}"#);
        assert_eq!(classify(&ignored, &no_response), Some(false));
    }

    #[test]
    fn at_response_headers_details_matter_only_for_5xx_or_no_status() {
        assert!(!failure_details_matter_at_headers(Some(200)));
        assert!(!failure_details_matter_at_headers(Some(499)));
        assert!(failure_details_matter_at_headers(Some(503)));
        assert!(failure_details_matter_at_headers(Some(0)));
        assert!(failure_details_matter_at_headers(None));
    }

    #[test]
    fn client_gone_before_a_response_says_nothing() {
        let gone = Response {
            status: None,
            flags: flags::DOWNSTREAM_CONNECTION_TERMINATION,
            code_details: Some("downstream_remote_disconnect"),
        };
        assert_eq!(classify(&failure("{}"), &gone), None);
        assert_eq!(classify(&failure("{}"), &Response::default()), None);
    }
}
