//! Host patterns against `:authority` values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_shared::host_pattern::{split_authority, HostPattern};

fuzz_target!(|data: &[u8]| {
    let [pattern, authority] = meshwasm_fuzz::fields::<2>(data);
    split_authority(&authority);
    if let Ok(parsed) = HostPattern::parse(&pattern) {
        parsed.matches(&authority);
    }
});
