//! meshwasm circuit-breaker filter: resilience4j-style breakers per upstream,
//! route, header or claim, shared by all Envoy workers through proxy-wasm
//! shared data. `config`, `policy`, `breaker` and `store` are host-free and
//! unit-tested natively; `filter` is the proxy-wasm glue.

pub mod breaker;
pub mod config;
pub mod filter;
pub mod policy;
pub mod store;

/// A root context of this filter, for the module that hosts it: this crate's
/// own entry point or the combined module.
pub fn new_root_context() -> Box<dyn proxy_wasm::traits::RootContext> {
    Box::new(filter::BreakerRoot::new())
}

// Only the wasm module needs the entry point; natively it would clash with the
// combined module's when a workspace build turns `standalone` on for both.
#[cfg(all(feature = "standalone", target_family = "wasm"))]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| new_root_context());
}}
