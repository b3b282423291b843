//! What every meshwasm filter needs: JSON config loading with field-level
//! errors, `application/problem+json` responses, compare-and-swap updates of
//! proxy-wasm shared data, metric id caching, header helpers, and the one
//! meaning of a claim path ([`claims`]) and of a host pattern ([`host_pattern`]).
//!
//! Each module keeps its logic host-independent so it is unit-tested natively;
//! the few functions that call the proxy-wasm host are marked as glue.

pub mod claims;
pub mod config;
pub mod duration;
pub mod filter_state;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod headers;
pub mod host_headers;
pub mod host_log;
pub mod host_pattern;
pub mod metrics;
pub mod path_pattern;
pub mod problem;
pub mod shared_data;
pub mod stage;
pub mod unconfigured;
