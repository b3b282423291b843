//! meshwasm routing filter: ordered rules over path, method, host, headers,
//! query parameters, cookies, verified claims and W3C baggage; actions that
//! set headers, rewrite the path or authority, redirect, answer directly,
//! split users into sticky cohorts and carry a lane across hops in
//! `baggage`. Headers the filter owns are stripped from incoming requests, and
//! Envoy re-selects the route after the filter changes the request.
//!
//! `config`, `matcher`, `hash`, `baggage` and `engine` are host-independent
//! and unit-tested natively; `filter` is the proxy-wasm glue.

pub mod baggage;
pub mod config;
pub mod engine;
pub mod filter;
pub mod hash;
pub mod matcher;

/// A root context of this filter, for the module that hosts it: this crate's
/// own entry point or the combined module.
pub fn new_root_context() -> Box<dyn proxy_wasm::traits::RootContext> {
    Box::new(filter::RoutingRoot::default())
}

// Only the wasm module needs the entry point; natively it would clash with the
// combined module's when a workspace build turns `standalone` on for both.
#[cfg(all(feature = "standalone", target_family = "wasm"))]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| new_root_context());
}}
