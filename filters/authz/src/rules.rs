//! Rule evaluation with Istio AuthorizationPolicy semantics: a matching DENY
//! rule denies; otherwise, when ALLOW rules exist, one must match. Dry-run
//! rules never change the decision: they are evaluated as if enforced and
//! reported when the shadow decision would deny.

use crate::config::{Action, ClaimCondition, Rule, StringMatch};
use meshwasm_shared::claims;
use meshwasm_shared::host_headers::Header;
use serde_json::Value;

/// What rules look at.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    pub headers: &'a [Header<'a>],
    /// The mTLS peer's SPIFFE identity without `spiffe://`, when there is one.
    pub peer: Option<&'a str>,
    /// `iss/sub` and verified claims, when a token was verified.
    pub principal: Option<&'a str>,
    pub claims: Option<&'a Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied by the named DENY rule.
    DeniedBy(String),
    /// ALLOW rules exist and none matched.
    NoAllowMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub decision: Decision,
    /// Set when enforcing the dry-run rules too would deny: the dry-run DENY
    /// rule that matched, or `no-allow-match`.
    pub dry_run_deny: Option<String>,
}

fn claim_holds(condition: &ClaimCondition, claims: Option<&Value>) -> bool {
    let value = claims.and_then(|claims| claims::lookup(claims, &condition.claim));
    if condition.present == Some(true) {
        return value.is_some_and(|value| !value.is_null());
    }
    if condition.absent == Some(true) {
        return value.is_none_or(Value::is_null);
    }
    let Some(value) = value else {
        return false;
    };
    let same = |want: &Value, have: &Value| match (want, have) {
        (Value::String(want), have) => claims::scalar_text(have).as_deref() == Some(want),
        (want, have) => want == have,
    };
    if let Some(want) = &condition.equals {
        return !value.is_array() && same(want, value);
    }
    if let Some(options) = &condition.one_of {
        return match value {
            Value::Array(items) => items
                .iter()
                .any(|item| options.iter().any(|want| same(want, item))),
            scalar => options.iter().any(|want| same(want, scalar)),
        };
    }
    if let Some(want) = &condition.contains {
        return match value {
            Value::Array(items) => items.iter().any(|item| same(want, item)),
            // Space-delimited claims such as `scope`.
            Value::String(text) => claims::scalar_text(want)
                .is_some_and(|want| text.split(' ').any(|word| word == want)),
            _ => false,
        };
    }
    false
}

fn any_or_empty<T>(values: &[T], hit: impl Fn(&T) -> bool) -> bool {
    values.is_empty() || values.iter().any(hit)
}

fn none<T>(values: &[T], hit: impl Fn(&T) -> bool) -> bool {
    !values.iter().any(hit)
}

pub fn rule_matches(rule: &Rule, request: &RequestView) -> bool {
    let principal_matches = |pattern: &StringMatch| {
        request
            .principal
            .is_some_and(|principal| pattern.matches(principal))
    };
    let peer_matches =
        |pattern: &StringMatch| request.peer.is_some_and(|peer| pattern.matches(peer));
    any_or_empty(&rule.hosts, |h| h.matches(request.host))
        && none(&rule.not_hosts, |h| h.matches(request.host))
        && any_or_empty(&rule.methods, |m| m == request.method)
        && none(&rule.not_methods, |m| m == request.method)
        && any_or_empty(&rule.paths, |p| p.matches(request.path))
        && none(&rule.not_paths, |p| p.matches(request.path))
        && rule.headers.iter().all(|condition| {
            let values: Vec<&str> = request
                .headers
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(&condition.name))
                .map(|(_, value)| value.as_ref())
                .collect();
            !values.is_empty()
                && any_or_empty(&condition.values, |want| {
                    values.iter().any(|v| want.matches(v))
                })
        })
        && any_or_empty(&rule.principals, peer_matches)
        && none(&rule.not_principals, peer_matches)
        && any_or_empty(&rule.request_principals, principal_matches)
        && none(&rule.not_request_principals, principal_matches)
        && rule
            .claims
            .iter()
            .all(|condition| claim_holds(condition, request.claims))
}

fn decide<'a>(rules: impl Iterator<Item = &'a Rule> + Clone, request: &RequestView) -> Decision {
    if let Some(rule) = rules
        .clone()
        .find(|rule| rule.action == Action::Deny && rule_matches(rule, request))
    {
        return Decision::DeniedBy(rule.name.clone());
    }
    let mut allow_rules = rules.filter(|rule| rule.action == Action::Allow).peekable();
    if allow_rules.peek().is_none() {
        return Decision::Allow;
    }
    if allow_rules.any(|rule| rule_matches(rule, request)) {
        Decision::Allow
    } else {
        Decision::NoAllowMatch
    }
}

pub fn evaluate(rules: &[Rule], request: &RequestView) -> Evaluation {
    let decision = decide(rules.iter().filter(|rule| !rule.dry_run), request);
    let mut dry_run_deny = None;
    if decision == Decision::Allow && rules.iter().any(|rule| rule.dry_run) {
        dry_run_deny = match decide(rules.iter(), request) {
            Decision::Allow => None,
            Decision::DeniedBy(name) => Some(name),
            Decision::NoAllowMatch => Some("no-allow-match".to_owned()),
        };
    }
    Evaluation {
        decision,
        dry_run_deny,
    }
}
