//! Metrics through the proxy-wasm metrics API. Ids are defined once per VM and
//! cached by name, so the request path never re-defines a metric.
//!
//! Labels follow Istio's stat-tag convention: `tag=.=value;.;metric_name`.
//! Envoy turns each `tag` into a Prometheus label once a tag-extraction rule
//! (`stats_tags`, or Istio's `extraStatTags`) with regex [`tag_regex`] exists.

use proxy_wasm::types::MetricType;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Where metric values go: the proxy-wasm host, or a recorder in tests.
pub trait MetricSink {
    fn define(&mut self, kind: MetricType, name: &str) -> Option<u32>;
    fn add(&mut self, id: u32, delta: i64);
    fn set(&mut self, id: u32, value: u64);
    fn record(&mut self, id: u32, value: u64);
}

/// Glue: the host's metrics API. Failures are logged, never fatal.
#[derive(Debug, Default)]
pub struct HostSink;

impl MetricSink for HostSink {
    fn define(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        proxy_wasm::hostcalls::define_metric(kind, name)
            .map_err(|status| log::warn!("could not define metric {name}: {status:?}"))
            .ok()
    }

    fn add(&mut self, id: u32, delta: i64) {
        if let Err(status) = proxy_wasm::hostcalls::increment_metric(id, delta) {
            log::debug!("could not increment metric {id}: {status:?}");
        }
    }

    fn set(&mut self, id: u32, value: u64) {
        if let Err(status) = proxy_wasm::hostcalls::record_metric(id, value) {
            log::debug!("could not set metric {id}: {status:?}");
        }
    }

    fn record(&mut self, id: u32, value: u64) {
        self.set(id, value);
    }
}

/// Metric ids cached by full (tagged) name.
pub struct Metrics<S: MetricSink = HostSink> {
    sink: S,
    ids: HashMap<String, u32>,
}

impl Default for Metrics<HostSink> {
    fn default() -> Self {
        Self::new(HostSink)
    }
}

impl<S: MetricSink> Metrics<S> {
    pub fn new(sink: S) -> Self {
        Self {
            sink,
            ids: HashMap::new(),
        }
    }

    /// The id of metric `name`, defined on first use. For callers that keep
    /// ids under a cheaper key than the tagged name (see [`FastMap`]).
    pub fn id(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        let id = self.sink.define(kind, name)?;
        self.ids.insert(name.to_owned(), id);
        Some(id)
    }

    pub fn count(&mut self, name: &str, delta: i64) {
        if let Some(id) = self.id(MetricType::Counter, name) {
            self.sink.add(id, delta);
        }
    }

    pub fn gauge_add(&mut self, name: &str, delta: i64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            self.sink.add(id, delta);
        }
    }

    pub fn gauge_set(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            self.sink.set(id, value);
        }
    }

    pub fn histogram(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Histogram, name) {
            self.sink.record(id, value);
        }
    }

    /// Adds `delta` to the counter or gauge `id` (from [`Metrics::id`]).
    pub fn add(&mut self, id: u32, delta: i64) {
        self.sink.add(id, delta);
    }

    /// Records `value` in the histogram `id` (from [`Metrics::id`]).
    pub fn record(&mut self, id: u32, value: u64) {
        self.sink.record(id, value);
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }
}

/// A hash map with a cheap, non-keyed hash (FxHash: one multiply per word),
/// for caches keyed by short label values on the request path. The keys are
/// bounded label values, so collision flooding cannot grow the map.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// The hasher of [`FastMap`] (rustc's FxHasher).
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let mut rest = [0u8; 8];
        for (to, from) in rest.iter_mut().zip(chunks.remainder()) {
            *to = *from;
        }
        self.add(u64::from_le_bytes(rest));
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn write_u16(&mut self, value: u16) {
        self.add(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// `name` with Istio-convention tags in front: `a=.=1;.;b=.=2;.;name`.
/// Characters that would break the convention are replaced in values.
pub fn tagged_name(name: &str, tags: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(name.len() + tags.len() * 24);
    for (tag, value) in tags {
        out.push_str(tag);
        out.push_str("=.=");
        out.extend(value.chars().map(|c| match c {
            ';' | '=' | ' ' | '\n' | '\r' => '_',
            other => other,
        }));
        out.push_str(";.;");
    }
    out.push_str(name);
    out
}

/// The Envoy tag-extraction regex that turns `tag=.=value;.;` into a label.
pub fn tag_regex(tag: &str) -> String {
    format!(r"({tag}=\.=(.*?);\.;)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        defined: Vec<String>,
        values: HashMap<u32, i64>,
    }

    impl MetricSink for Recorder {
        fn define(&mut self, _kind: MetricType, name: &str) -> Option<u32> {
            self.defined.push(name.to_owned());
            Some(self.defined.len() as u32)
        }
        fn add(&mut self, id: u32, delta: i64) {
            *self.values.entry(id).or_default() += delta;
        }
        fn set(&mut self, id: u32, value: u64) {
            self.values.insert(id, value as i64);
        }
        fn record(&mut self, id: u32, value: u64) {
            self.set(id, value);
        }
    }

    #[test]
    fn metrics_are_defined_once() {
        let mut metrics = Metrics::new(Recorder::default());
        metrics.count("a_total", 1);
        metrics.count("a_total", 2);
        metrics.gauge_set("b", 5);
        assert_eq!(metrics.sink().defined, vec!["a_total", "b"]);
        assert_eq!(metrics.sink().values[&1], 3);
        assert_eq!(metrics.sink().values[&2], 5);
    }

    #[test]
    fn ids_are_usable_directly() {
        let mut metrics = Metrics::new(Recorder::default());
        let id = metrics.id(MetricType::Counter, "c_total").unwrap();
        assert_eq!(metrics.id(MetricType::Counter, "c_total"), Some(id));
        metrics.add(id, 2);
        metrics.record(id, 5);
        assert_eq!(metrics.sink().defined, vec!["c_total"]);
        assert_eq!(metrics.sink().values[&id], 5);
    }

    #[test]
    fn fast_map_tells_keys_apart() {
        let mut map: FastMap<(String, u16), u32> = FastMap::default();
        for (index, key) in ["", "a", "ab", "abcdefgh", "abcdefghi", "abcdefgh\0"]
            .iter()
            .enumerate()
        {
            map.insert(((*key).to_owned(), 1), index as u32);
            map.insert(((*key).to_owned(), 2), 100 + index as u32);
        }
        assert_eq!(map.len(), 12);
        assert_eq!(map[&("abcdefgh".to_owned(), 2)], 103);
        assert_eq!(map[&(String::new(), 1)], 0);
    }

    #[test]
    fn tags_use_istio_convention_and_are_sanitized() {
        assert_eq!(
            tagged_name("meshwasm_x_total", &[("route", "/a"), ("code", "2=;0 0")]),
            "route=.=/a;.;code=.=2__0_0;.;meshwasm_x_total"
        );
        assert_eq!(tag_regex("route"), r"(route=\.=(.*?);\.;)");
    }
}
