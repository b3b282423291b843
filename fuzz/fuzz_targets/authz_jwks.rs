//! JWKS documents: strict (inline config) and lenient (fetched) parsing.
#![no_main]

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use meshwasm_authz::keys::KeySet;

const ALLOWED: [Algorithm; 5] = [
    Algorithm::HS256,
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::PS384,
    Algorithm::EdDSA,
];

fuzz_target!(|data: &[u8]| {
    if let Ok(keys) = KeySet::parse(data, &ALLOWED) {
        for alg in ALLOWED {
            keys.has_key_for(alg);
            keys.candidates(Some("k1"), alg).count();
        }
    }
    let _ = KeySet::parse_fetched(data, &ALLOWED);
});
