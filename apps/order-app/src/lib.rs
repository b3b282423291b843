//! The sample order app: three small HTTP services used by the meshwasm demos
//! and end-to-end tests.
//!
//! - `order` takes `POST /orders`, reserves stock at `inventory` and charges
//!   `payment`, forwarding the caller's trace headers on both calls.
//! - `inventory` keeps per-SKU stock in memory and reports its version.
//! - `payment` charges, with fault knobs (error rate, latency) for demos.
//!
//! Every service answers `/healthz` and `/metrics`, tags responses with
//! `x-app-version`, and writes one JSON access-log line per request to stdout.

// Library code must not index in ways that can panic; tests may.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod env;
pub mod error;
pub mod extract;
pub mod inventory;
pub mod order;
pub mod payment;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod trace;
pub mod validate;

pub use error::ApiError;
pub use service::ServiceInfo;
