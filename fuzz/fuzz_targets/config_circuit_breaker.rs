//! The circuit-breaker config loader on any bytes (seeded with the shipped
//! pluginConfig), down to each policy's breaker spec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_circuit_breaker::breaker::{Breaker, Spec};
use meshwasm_circuit_breaker::config::Config;
use meshwasm_circuit_breaker::policy::Policies;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = meshwasm_shared::config::parse::<Config>(Some(data)) {
        Policies::new(&config);
        for policy in &config.policies {
            let spec = Spec::from_policy(policy);
            Breaker::new(&spec, 0).admit(&spec, 1);
        }
    }
});
