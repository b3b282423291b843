//! The routing config loader on any bytes (seeded with the shipped pluginConfig).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_routing::config::Config;
use meshwasm_routing::engine::Router;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = meshwasm_shared::config::parse::<Config>(Some(data)) {
        Router::new(config);
    }
});
