//! Envoy filter state through which meshwasm filters hand their decisions to
//! each other and to access logs. A wasm filter writes `set_property([key])`;
//! Envoy keeps it for the stream as `wasm.<key>` (access logs:
//! `%FILTER_STATE(wasm.meshwasm.routing.lane:PLAIN)%`), and later wasm filters
//! read it with `get_property([key])`.

pub const AUTHZ_RESULT: &str = "meshwasm.authz.result";
pub const AUTHZ_PRINCIPAL: &str = "meshwasm.authz.principal";
/// The verified token payload (JSON); never an unverified one.
pub const AUTHZ_CLAIMS: &str = "meshwasm.authz.claims";
pub const ROUTING_RULE: &str = "meshwasm.routing.rule";
pub const ROUTING_LANE: &str = "meshwasm.routing.lane";
pub const BREAKER_KEY: &str = "meshwasm.breaker.key";
pub const BREAKER_STATE: &str = "meshwasm.breaker.state";

/// Glue: records `value` under `key` for the current stream.
pub fn set(key: &str, value: &str) {
    match proxy_wasm::hostcalls::set_property(vec![key], Some(value.as_bytes())) {
        Ok(()) => crate::stage::note_filter_state(key, value.as_bytes()),
        Err(status) => log::debug!("could not set filter state {key}: {status:?}"),
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
