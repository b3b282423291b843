//! The authz config loader on any bytes (seeded with the shipped pluginConfig).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_authz::config::AuthzConfig;
use meshwasm_authz::engine::Engine;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = meshwasm_shared::config::parse::<AuthzConfig>(Some(data)) {
        Engine::new(config, data);
    }
});
