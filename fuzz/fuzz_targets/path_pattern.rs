//! Path patterns and templates (`/orders/{id}`, `/files/{**}`, `*`-forms):
//! parse, match a path, and parse the pattern's own display form again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_shared::path_pattern::PathPattern;

fuzz_target!(|data: &[u8]| {
    let [pattern, path] = meshwasm_fuzz::fields::<2>(data);
    if let Ok(parsed) = PathPattern::parse(&pattern) {
        let matched = parsed.matches(&path);
        let shown = PathPattern::parse(&parsed.to_string()).expect("a shown pattern parses");
        assert_eq!(shown.matches(&path), matched);
    }
});
