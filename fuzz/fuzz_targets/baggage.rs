//! W3C baggage: parse, edit, serialise, and parse what was sent again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_routing::baggage::{percent_decode, percent_encode, Baggage};

fuzz_target!(|data: &[u8]| {
    let [header, key] = meshwasm_fuzz::fields::<2>(data);
    let mut baggage = Baggage::parse(&header);
    baggage.get(&key);
    baggage.set("lane", &key);
    let sent = baggage.to_header();
    let again = Baggage::parse(&sent);
    assert_eq!(
        again.to_header(),
        sent,
        "a sent baggage header reads back the same"
    );
    baggage.remove(&key);
    if let Some(decoded) = percent_decode(&key) {
        assert_eq!(percent_decode(&percent_encode(&decoded)), Some(decoded));
    }
});
