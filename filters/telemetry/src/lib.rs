//! meshwasm telemetry filter: RED metrics labelled by route template and
//! tenant with a hard cardinality bound, W3C/B3 trace context that every hop
//! keeps, and a structured access log that never carries credentials.
//!
//! Host-independent modules (`config`, `labels`, `cardinality`, `trace`,
//! `access_log`, `report`) hold the logic and its tests; `filter` is the
//! proxy-wasm glue.

pub mod access_log;
pub mod cardinality;
pub mod config;
pub mod filter;
pub mod labels;
pub mod report;
pub mod trace;

/// A root context of this filter, for the module that hosts it: this crate's
/// own entry point or the combined module.
pub fn new_root_context() -> Box<dyn proxy_wasm::traits::RootContext> {
    Box::new(filter::TelemetryRoot::default())
}

// Only the wasm module needs the entry point; natively it would clash with the
// combined module's when a workspace build turns `standalone` on for both.
#[cfg(all(feature = "standalone", target_family = "wasm"))]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| new_root_context());
}}
