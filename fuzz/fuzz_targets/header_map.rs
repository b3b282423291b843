//! proxy-wasm's serialised header maps as Envoy hands them over.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_shared::host_headers::decode_map;

fuzz_target!(|data: &[u8]| {
    let pairs = decode_map(data);
    // The count, then per pair two lengths and two NULs: no pair is invented.
    assert!(pairs.is_empty() || 4 + pairs.len() * 10 <= data.len());
    for (name, value) in pairs {
        // Text is borrowed unless the bytes were not UTF-8 (U+FFFD then).
        for text in [name, value] {
            assert!(matches!(text, std::borrow::Cow::Borrowed(_)) || text.contains('\u{fffd}'));
        }
    }
});
