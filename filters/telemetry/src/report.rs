//! What one request adds to the metrics, independent of the host: the
//! in-flight gauge when it starts, the counter and histograms when it ends.

use crate::labels::{
    response_code_labels, RequestLabels, REQUESTS_TOTAL, REQUEST_BYTES, REQUEST_DURATION,
    RESPONSE_BYTES,
};
use meshwasm_shared::claims;
use meshwasm_shared::metrics::{MetricSink, Metrics};
use std::collections::HashMap;
use std::rc::Rc;

/// What Envoy measured for a finished request.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Observation {
    pub code: Option<i64>,
    pub duration_ms: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

pub fn request_started<S: MetricSink>(metrics: &mut Metrics<S>, in_flight_name: &str) {
    metrics.gauge_add(in_flight_name, 1);
}

/// The tagged names of the metrics a finished request updates.
struct CompletedNames {
    requests: String,
    duration: String,
    request_bytes: String,
    response_bytes: String,
}

impl CompletedNames {
    fn new(labels: &RequestLabels, code: Option<i64>) -> Self {
        let (code, class) = response_code_labels(code);
        let name = |metric| labels.completed_name(metric, &code, class);
        Self {
            requests: name(REQUESTS_TOTAL),
            duration: name(REQUEST_DURATION),
            request_bytes: name(REQUEST_BYTES),
            response_bytes: name(RESPONSE_BYTES),
        }
    }
}

/// Completed-request metric names per label set and response code, built on
/// first use. Bounded like the metrics themselves: every label value is, and
/// codes outside 100–599 share one entry.
#[derive(Default)]
pub struct NameCache {
    by_labels: HashMap<RequestLabels, HashMap<Option<i64>, Rc<CompletedNames>>>,
}

impl NameCache {
    fn get(&mut self, labels: &RequestLabels, code: Option<i64>) -> Rc<CompletedNames> {
        let code = code.filter(|code| (100..=599).contains(code));
        if let Some(names) = self
            .by_labels
            .get(labels)
            .and_then(|by_code| by_code.get(&code))
        {
            return names.clone();
        }
        let names = Rc::new(CompletedNames::new(labels, code));
        self.by_labels
            .entry(labels.clone())
            .or_default()
            .insert(code, names.clone());
        names
    }
}

pub fn request_finished<S: MetricSink>(
    metrics: &mut Metrics<S>,
    names: &mut NameCache,
    in_flight_name: &str,
    labels: &RequestLabels,
    observation: &Observation,
) {
    metrics.gauge_add(in_flight_name, -1);
    let names = names.get(labels, observation.code);
    metrics.count(&names.requests, 1);
    metrics.histogram(&names.duration, observation.duration_ms);
    metrics.histogram(&names.request_bytes, observation.request_bytes);
    metrics.histogram(&names.response_bytes, observation.response_bytes);
}

/// The scalar claim at `path` ([`claims`]) in the verified token payload.
pub fn claim_value(claims_json: &[u8], path: &str) -> Option<String> {
    let claims: serde_json::Value = serde_json::from_slice(claims_json).ok()?;
    claims::lookup_text(&claims, path)
}

/// Envoy serializes integer and duration properties as 8 little-endian bytes
/// (durations in nanoseconds).
pub fn decode_i64(bytes: &[u8]) -> Option<i64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(i64::from_le_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{Reporter, REQUESTS_IN_FLIGHT};
    use proxy_wasm::types::MetricType;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Recorder {
        names: Vec<(MetricType, String)>,
        counters: HashMap<u32, i64>,
        samples: HashMap<u32, Vec<u64>>,
    }

    impl Recorder {
        fn id_of(&self, name_suffix: &str, needle: &str) -> Vec<u32> {
            self.names
                .iter()
                .enumerate()
                .filter(|(_, (_, name))| name.ends_with(name_suffix) && name.contains(needle))
                .map(|(index, _)| index as u32 + 1)
                .collect()
        }
    }

    impl MetricSink for Recorder {
        fn define(&mut self, kind: MetricType, name: &str) -> Option<u32> {
            self.names.push((kind, name.to_owned()));
            Some(self.names.len() as u32)
        }
        fn add(&mut self, id: u32, delta: i64) {
            *self.counters.entry(id).or_default() += delta;
        }
        fn set(&mut self, id: u32, value: u64) {
            self.counters.insert(id, value as i64);
        }
        fn record(&mut self, id: u32, value: u64) {
            self.samples.entry(id).or_default().push(value);
        }
    }

    fn labels(tenant: &str) -> RequestLabels {
        RequestLabels {
            reporter: Reporter::Outbound,
            source_workload: "order".into(),
            destination_workload: "payment".into(),
            route: "/payments".into(),
            method: "POST",
            tenant: tenant.into(),
        }
    }

    #[test]
    fn a_request_moves_every_metric() {
        let mut metrics = Metrics::new(Recorder::default());
        let labels = labels("acme");
        let in_flight = labels.in_flight_name();
        request_started(&mut metrics, &in_flight);
        request_started(&mut metrics, &in_flight);
        let ok = Observation {
            code: Some(201),
            duration_ms: 12,
            request_bytes: 300,
            response_bytes: 80,
        };
        let mut names = NameCache::default();
        request_finished(&mut metrics, &mut names, &in_flight, &labels, &ok);
        request_finished(&mut metrics, &mut names, &in_flight, &labels, &ok);
        request_started(&mut metrics, &in_flight);
        request_finished(
            &mut metrics,
            &mut names,
            &in_flight,
            &labels,
            &Observation::default(),
        );

        let sink = metrics.sink();
        let gauge = sink.id_of(REQUESTS_IN_FLIGHT, "");
        assert_eq!(gauge.len(), 1);
        assert_eq!(sink.counters[&gauge[0]], 0);
        assert_eq!(sink.names[gauge[0] as usize - 1].0, MetricType::Gauge);

        let created = sink.id_of(REQUESTS_TOTAL, "response_code=.=201;");
        assert_eq!(created.len(), 1);
        assert_eq!(sink.counters[&created[0]], 2);
        let reset = sink.id_of(
            REQUESTS_TOTAL,
            "response_code_class=.=unknown;.;response_code=.=0;",
        );
        assert_eq!(sink.counters[&reset[0]], 1);

        let durations = sink.id_of(REQUEST_DURATION, "response_code=.=201;");
        assert_eq!(sink.samples[&durations[0]], vec![12, 12]);
        assert_eq!(
            sink.names[durations[0] as usize - 1].0,
            MetricType::Histogram
        );
        let sizes = sink.id_of(REQUEST_BYTES, "response_code=.=201;");
        assert_eq!(sink.samples[&sizes[0]], vec![300, 300]);
        let sizes = sink.id_of(RESPONSE_BYTES, "response_code=.=201;");
        assert_eq!(sink.samples[&sizes[0]], vec![80, 80]);
        // Defined once each: gauge + 4 metrics for 201 + 4 for the reset.
        assert_eq!(sink.names.len(), 9);
    }

    #[test]
    fn codes_outside_the_valid_range_share_the_unknown_names() {
        let mut metrics = Metrics::new(Recorder::default());
        let mut names = NameCache::default();
        let labels = labels("acme");
        let in_flight = labels.in_flight_name();
        for code in [None, Some(0), Some(1000), Some(-1)] {
            let observation = Observation {
                code,
                ..Observation::default()
            };
            request_finished(&mut metrics, &mut names, &in_flight, &labels, &observation);
        }
        let unknown = metrics.sink().id_of(
            REQUESTS_TOTAL,
            "response_code_class=.=unknown;.;response_code=.=0;",
        );
        assert_eq!(unknown.len(), 1);
        assert_eq!(metrics.sink().counters[&unknown[0]], 4);
        // The gauge + 4 metrics for code 0.
        assert_eq!(metrics.sink().names.len(), 5);
    }

    #[test]
    fn claims() {
        let claims =
            br#"{"sub":"u1","tenant":"acme","org":{"id":42,"tenant":"globex"},"roles":["a"],
            "https://x.io/tenant":"initech","beta":true}"#;
        assert_eq!(claim_value(claims, "tenant").as_deref(), Some("acme"));
        assert_eq!(
            claim_value(claims, "https://x.io/tenant").as_deref(),
            Some("initech")
        );
        assert_eq!(claim_value(claims, "beta").as_deref(), Some("true"));
        assert_eq!(claim_value(claims, "org.tenant").as_deref(), Some("globex"));
        assert_eq!(claim_value(claims, "org.id").as_deref(), Some("42"));
        assert_eq!(claim_value(claims, "roles"), None);
        assert_eq!(claim_value(claims, "missing"), None);
        assert_eq!(claim_value(b"not json", "tenant"), None);
    }

    #[test]
    fn integer_properties() {
        assert_eq!(decode_i64(&200i64.to_le_bytes()), Some(200));
        assert_eq!(decode_i64(&[1, 2, 3]), None);
        assert_eq!(decode_i64(b"200"), None);
    }
}
