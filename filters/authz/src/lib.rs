//! meshwasm authz filter: JWT authentication and Istio-style authorization.
//! The core (config, token handling, verification, rules, caches) is pure
//! Rust tested natively; `filter` is the proxy-wasm glue.

pub mod cache;
pub mod claims;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod keys;
pub mod rules;
pub mod token;
pub mod verify;

#[cfg(test)]
mod tests;
