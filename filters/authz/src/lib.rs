//! meshwasm authz filter: JWT authentication and Istio-style authorization.
//! The core (config, token handling, verification, rules, caches) is pure
//! Rust tested natively; `filter` is the proxy-wasm glue.

pub mod cache;
pub mod claims;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod filter;
pub mod jwks;
pub mod keys;
pub mod rules;
pub mod token;
pub mod verify;

#[cfg(test)]
mod tests;

/// A root context of this filter, for the module that hosts it: this crate's
/// own entry point or the combined module.
pub fn new_root_context() -> Box<dyn proxy_wasm::traits::RootContext> {
    Box::new(filter::AuthzRoot::default())
}

// Only the wasm module needs the entry point; natively it would clash with the
// combined module's when a workspace build turns `standalone` on for both.
#[cfg(all(feature = "standalone", target_family = "wasm"))]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| new_root_context());
}}
