//! meshwasm circuit-breaker filter: resilience4j-style breakers per upstream,
//! route, header or claim, shared by all Envoy workers through proxy-wasm
//! shared data. `config`, `policy`, `breaker` and `store` are host-free and
//! unit-tested natively; `filter` is the proxy-wasm glue.

pub mod breaker;
pub mod config;
pub mod filter;
pub mod policy;
pub mod store;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(filter::BreakerRoot::new()) });
}}
