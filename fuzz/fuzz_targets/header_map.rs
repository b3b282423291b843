//! proxy-wasm's serialised header maps as Envoy hands them over, and the
//! staged chain's copy of a map after the stages' header writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_shared::host_headers::{decode_map, with_writes, HeaderWrite};

fuzz_target!(|data: &[u8]| {
    let pairs = decode_map(data);
    // The count, then per pair two lengths and two NULs: no pair is invented.
    assert!(pairs.is_empty() || 4 + pairs.len() * 10 <= data.len());
    for (name, value) in &pairs {
        // Text is borrowed unless the bytes were not UTF-8 (U+FFFD then).
        for text in [name, value] {
            assert!(matches!(text, std::borrow::Cow::Borrowed(_)) || text.contains('\u{fffd}'));
        }
    }
    // A set replaces every value of its (lower-cased) name with one, a remove
    // drops them all, and nothing else changes.
    let name = pairs
        .iter()
        .map(|(name, _)| name)
        .find(|name| name.is_ascii())
        .map_or_else(|| "x-fuzz".to_owned(), |name| name.to_ascii_lowercase());
    let named = |map: &[u8]| -> Vec<String> {
        decode_map(map)
            .into_iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.into_owned())
            .collect()
    };
    let others = |map: &[u8]| decode_map(map).into_iter().filter(|(n, _)| *n != name).count();
    let set = with_writes(data, &[HeaderWrite::set(&name, Some("v"))]);
    assert_eq!(named(&set), ["v"]);
    let removed = with_writes(&set, &[HeaderWrite::set(&name, None)]);
    assert!(named(&removed).is_empty());
    assert_eq!(others(&removed), others(&set));
});
