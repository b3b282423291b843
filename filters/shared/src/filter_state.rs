//! Envoy filter state through which meshwasm filters hand their decisions to
//! each other and to access logs. A wasm filter writes `set_property([key])`;
//! Envoy keeps it for the stream as `wasm.<key>` (access logs:
//! `%FILTER_STATE(wasm.meshwasm.routing:PLAIN)%`), and later wasm filters
//! read it with `get_property([key])`.
//!
//! Each filter writes its outcome once, as one JSON record: a write costs
//! about 2.9k instructions and a read by a later plugin 12.4k
//! (BENCHMARKS.md, host-call price list), so one record per filter instead
//! of a key per field saves a write in each filter and a read in telemetry.
//! The verified claims stay a key of their own: they are the token payload
//! as is, which routing, the breaker and telemetry read by claim path.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// [`AuthzOutcome`].
pub const AUTHZ: &str = "meshwasm.authz";
/// The verified token payload (JSON); never an unverified one.
pub const AUTHZ_CLAIMS: &str = "meshwasm.authz.claims";
/// [`RoutingOutcome`].
pub const ROUTING: &str = "meshwasm.routing";
/// [`BreakerOutcome`].
pub const BREAKER: &str = "meshwasm.breaker";

/// The authz filter's decision: `{"result":"allow","principal":"iss/sub"}`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzOutcome<'a> {
    /// `allow`, `deny:<kind>` or `dry_run_deny:<rule>`.
    pub result: Cow<'a, str>,
    /// `iss/sub` of a verified token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<Cow<'a, str>>,
}

/// The routing filter's decision: `{"rule":"beta","lane":"v2"}`, either
/// absent when nothing matched.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingOutcome<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<Cow<'a, str>>,
}

/// The circuit breaker that guarded the request and its state (after the
/// request's outcome once there is one): `{"key":"…","state":"closed"}`; no
/// state when the breaker could not track the key or read its state.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerOutcome<'a> {
    pub key: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Cow<'a, str>>,
}

/// Glue: records `value` under `key` for the current stream.
pub fn set(key: &str, value: &str) {
    match proxy_wasm::hostcalls::set_property(vec![key], Some(value.as_bytes())) {
        Ok(()) => crate::stage::note_filter_state(key, value.as_bytes()),
        Err(status) => log::debug!("could not set filter state {key}: {status:?}"),
    }
}

/// Glue: records `record` as JSON under `key`.
pub fn set_record(key: &str, record: &impl Serialize) {
    match serde_json::to_string(record) {
        Ok(json) => set(key, &json),
        Err(err) => log::debug!("could not encode filter state {key}: {err}"),
    }
}

/// Glue: what an earlier filter of this stream recorded under `key` (inside
/// a staged chain, an earlier stage's value without a host call).
pub fn get(key: &str) -> Option<Vec<u8>> {
    crate::stage::filter_state(key).or_else(|| {
        proxy_wasm::hostcalls::get_property(vec![key])
            .ok()
            .flatten()
    })
}

/// Glue: the record an earlier filter wrote under `key`; none when absent or
/// not such a record.
pub fn record<T: DeserializeOwned>(key: &str) -> Option<T> {
    decode(&get(key)?)
}

fn decode<T: DeserializeOwned>(raw: &[u8]) -> Option<T> {
    serde_json::from_slice(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_compact_json_without_absent_fields() {
        let denied = AuthzOutcome {
            result: "deny:missing_token".into(),
            principal: None,
        };
        assert_eq!(
            serde_json::to_string(&denied).unwrap(),
            r#"{"result":"deny:missing_token"}"#
        );
        let routed = RoutingOutcome {
            rule: Some("beta".into()),
            lane: Some("v\"2".into()),
        };
        let json = serde_json::to_string(&routed).unwrap();
        assert_eq!(json, r#"{"rule":"beta","lane":"v\"2"}"#);
        assert_eq!(decode::<RoutingOutcome>(json.as_bytes()), Some(routed));
        assert_eq!(
            decode::<RoutingOutcome>(b"{}"),
            Some(RoutingOutcome::default())
        );
    }

    #[test]
    fn what_is_not_a_record_reads_as_none() {
        assert_eq!(decode::<AuthzOutcome>(b"allow"), None);
        assert_eq!(decode::<BreakerOutcome>(br#"{"state":"open"}"#), None);
        assert_eq!(decode::<BreakerOutcome>(b"\xff\xfe"), None);
    }
}
