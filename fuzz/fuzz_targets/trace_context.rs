//! `traceparent`, B3 single and multi headers and the choice between them.
//! `tracestate` is forwarded or dropped whole, never parsed: it rides along
//! as the sixth field only so that inputs look like real header sets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_telemetry::trace::{self, Incoming, TraceContext};

fuzz_target!(|data: &[u8]| {
    let [traceparent, b3, trace_id, span_id, sampled, _tracestate] =
        meshwasm_fuzz::fields::<6>(data);
    let incoming = Incoming {
        traceparent: Some(&traceparent),
        b3: Some(&b3),
        b3_trace_id: Some(&trace_id),
        b3_span_id: Some(&span_id),
        b3_sampled: Some(&sampled),
        b3_flags: Some(&sampled),
    };
    let (context, _) = trace::resolve(&incoming, true, || TraceContext::start(&[7; 24], 0.5));
    let header = context.traceparent();
    assert_eq!(
        TraceContext::from_traceparent(&header),
        Some(context.clone())
    );
    trace::within_ratio(&context.trace_id, 0.25);
    trace::within_ratio(&traceparent, 0.25);
});
