//! What one request adds to the metrics, independent of the host: the
//! in-flight gauge when it starts, the counter and histograms when it ends.

use crate::labels::{
    response_code_labels, Reporter, RequestLabels, REQUESTS_TOTAL, REQUEST_BYTES, REQUEST_DURATION,
    RESPONSE_BYTES,
};
use meshwasm_shared::claims;
use meshwasm_shared::metrics::{FastMap, MetricSink, Metrics};
use proxy_wasm::types::MetricType;

/// What Envoy measured for a finished request.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Observation {
    pub code: Option<i64>,
    pub duration_ms: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
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

/// The ids of the metrics a finished request updates.
#[derive(Debug, Clone, Copy)]
struct CompletedIds {
    requests: u32,
    duration: u32,
    request_bytes: u32,
    response_bytes: u32,
}

/// The labels of the in-flight gauge, as cheap values: the route by its
/// index among the configured templates (`None`: `other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InFlightKey {
    pub reporter: Reporter,
    pub route: Option<usize>,
    pub method: &'static str,
}

/// Metric ids per label set, defined on first use: the request path hashes
/// short label values with [`FastMap`]'s hash and never builds a tagged name
/// again. Bounded like the metrics themselves: every label value is, and
/// codes outside 100–599 share one entry. A metric the host failed to define
/// is asked for again next time.
#[derive(Default)]
pub struct MetricIds {
    in_flight: FastMap<InFlightKey, u32>,
    completed: FastMap<RequestLabels, FastMap<u16, CompletedIds>>,
}

impl MetricIds {
    /// The in-flight gauge's id for `labels` (`key` is their cheap form).
    pub fn in_flight<S: MetricSink>(
        &mut self,
        metrics: &mut Metrics<S>,
        key: InFlightKey,
        labels: &RequestLabels,
    ) -> Option<u32> {
        if let Some(id) = self.in_flight.get(&key) {
            return Some(*id);
        }
        let id = metrics.id(MetricType::Gauge, &labels.in_flight_name())?;
        self.in_flight.insert(key, id);
        Some(id)
    }

    fn completed<S: MetricSink>(
        &mut self,
        metrics: &mut Metrics<S>,
        labels: &RequestLabels,
        code: Option<i64>,
    ) -> Option<CompletedIds> {
        let code = code
            .filter(|code| (100..=599).contains(code))
            .and_then(|code| u16::try_from(code).ok());
        let key = code.unwrap_or(0);
        if let Some(ids) = self
            .completed
            .get(labels)
            .and_then(|by_code| by_code.get(&key))
        {
            return Some(*ids);
        }
        let names = CompletedNames::new(labels, code.map(i64::from));
        let ids = CompletedIds {
            requests: metrics.id(MetricType::Counter, &names.requests)?,
            duration: metrics.id(MetricType::Histogram, &names.duration)?,
            request_bytes: metrics.id(MetricType::Histogram, &names.request_bytes)?,
            response_bytes: metrics.id(MetricType::Histogram, &names.response_bytes)?,
        };
        self.completed
            .entry(labels.clone())
            .or_default()
            .insert(key, ids);
        Some(ids)
    }
}

/// A request started: the in-flight gauge (its id, from
/// [`MetricIds::in_flight`]) goes up.
pub fn request_started<S: MetricSink>(metrics: &mut Metrics<S>, in_flight: Option<u32>) {
    if let Some(id) = in_flight {
        metrics.add(id, 1);
    }
}

/// A request finished: the in-flight gauge goes down, the counter and the
/// histograms of its labels and response code move.
pub fn request_finished<S: MetricSink>(
    metrics: &mut Metrics<S>,
    ids: &mut MetricIds,
    in_flight: Option<u32>,
    labels: &RequestLabels,
    observation: &Observation,
) {
    if let Some(id) = in_flight {
        metrics.add(id, -1);
    }
    let Some(completed) = ids.completed(metrics, labels, observation.code) else {
        return;
    };
    metrics.add(completed.requests, 1);
    metrics.record(completed.duration, observation.duration_ms);
    metrics.record(completed.request_bytes, observation.request_bytes);
    metrics.record(completed.response_bytes, observation.response_bytes);
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
    use crate::labels::REQUESTS_IN_FLIGHT;
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

    fn key(route: Option<usize>) -> InFlightKey {
        InFlightKey {
            reporter: Reporter::Outbound,
            route,
            method: "POST",
        }
    }

    #[test]
    fn label_sets_get_their_own_ids() {
        let mut metrics = Metrics::new(Recorder::default());
        let mut ids = MetricIds::default();
        let (acme, globex) = (labels("acme"), labels("globex"));
        let ok = Observation {
            code: Some(200),
            ..Observation::default()
        };
        for labels in [&acme, &globex, &acme] {
            request_finished(&mut metrics, &mut ids, None, labels, &ok);
        }
        let sink = metrics.sink();
        let acme_total = sink.id_of(REQUESTS_TOTAL, "tenant=.=acme;");
        let globex_total = sink.id_of(REQUESTS_TOTAL, "tenant=.=globex;");
        assert_eq!(sink.counters[&acme_total[0]], 2);
        assert_eq!(sink.counters[&globex_total[0]], 1);
        assert_eq!(sink.names.len(), 8);
        let first = ids.in_flight(&mut metrics, key(Some(1)), &acme);
        let other_route = RequestLabels {
            route: "/refunds".into(),
            ..acme.clone()
        };
        let second = ids.in_flight(&mut metrics, key(Some(2)), &other_route);
        assert_ne!(first, second);
        assert_eq!(ids.in_flight(&mut metrics, key(Some(1)), &acme), first);
    }

    #[test]
    fn a_request_moves_every_metric() {
        let mut metrics = Metrics::new(Recorder::default());
        let mut ids = MetricIds::default();
        let labels = labels("acme");
        let in_flight = ids.in_flight(&mut metrics, key(None), &labels);
        assert_eq!(ids.in_flight(&mut metrics, key(None), &labels), in_flight);
        request_started(&mut metrics, in_flight);
        request_started(&mut metrics, in_flight);
        let ok = Observation {
            code: Some(201),
            duration_ms: 12,
            request_bytes: 300,
            response_bytes: 80,
        };
        request_finished(&mut metrics, &mut ids, in_flight, &labels, &ok);
        request_finished(&mut metrics, &mut ids, in_flight, &labels, &ok);
        request_started(&mut metrics, in_flight);
        request_finished(
            &mut metrics,
            &mut ids,
            in_flight,
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
        let mut ids = MetricIds::default();
        let labels = labels("acme");
        let in_flight = ids.in_flight(&mut metrics, key(Some(0)), &labels);
        for code in [None, Some(0), Some(1000), Some(-1)] {
            let observation = Observation {
                code,
                ..Observation::default()
            };
            request_finished(&mut metrics, &mut ids, in_flight, &labels, &observation);
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
