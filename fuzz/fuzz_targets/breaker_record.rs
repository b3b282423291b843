//! The breaker's shared-data record: whatever decodes must take calls and
//! outcomes under a spec whose window differs from the record's, and encode
//! to bytes that decode to the same breaker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_circuit_breaker::breaker::{Admission, Breaker, Outcome, Spec, WindowSpec};

fn spec(window: WindowSpec) -> Spec {
    Spec {
        consecutive_failures: Some(3),
        failure_rate_percent: Some(50),
        slow_call_rate_percent: Some(50),
        slow_call_ms: 100,
        minimum_calls: 2,
        window,
        open_ms: 1_000,
        backoff_multiplier: 2.0,
        max_open_ms: 60_000,
        permitted_calls: 2,
        max_concurrent: Some(4),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(decoded) = Breaker::decode(data) else {
        return;
    };
    assert_eq!(Breaker::decode(&decoded.encode()).as_ref(), Some(&decoded));
    for window in [
        WindowSpec::Count { size: 5 },
        WindowSpec::Time {
            buckets: 4,
            bucket_ms: 250,
        },
    ] {
        let spec = spec(window);
        let mut breaker = decoded.clone();
        for now_ms in [0, 1_000, u64::MAX / 2, u64::MAX] {
            breaker.state_at(now_ms);
            if let (Admission::Admitted(ticket), _) = breaker.admit(&spec, now_ms) {
                let outcome = Outcome {
                    failure: true,
                    duration_ms: 200,
                };
                breaker.record(&spec, ticket, outcome, now_ms);
            }
        }
        assert!(Breaker::decode(&breaker.encode()).is_some());
    }
});
