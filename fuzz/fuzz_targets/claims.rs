//! Claim paths through verified-token payloads, as every filter reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_shared::claims;

fuzz_target!(|data: &[u8]| {
    let [path, payload] = meshwasm_fuzz::fields::<2>(data);
    if !claims::is_path(&path) {
        return;
    }
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&payload) {
        if let Some(found) = claims::lookup(&value, &path) {
            claims::scalar_text(found);
            meshwasm_authz::claims::header_value(found);
        }
        claims::lookup_text(&value, &path);
    }
    meshwasm_telemetry::report::claim_value(payload.as_bytes(), &path);
});
