//! The telemetry config loader on any bytes (seeded with the shipped pluginConfig).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_telemetry::config::Config;

fuzz_target!(|data: &[u8]| {
    let _ = meshwasm_shared::config::parse::<Config>(Some(data));
});
