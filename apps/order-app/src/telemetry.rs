//! Request counters (Prometheus text) and the JSON access log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

/// The `route` label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// `app_requests_total` by route template and status code.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

impl Metrics {
    pub fn record(&self, route: &str, code: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        *requests.entry((route.to_owned(), code)).or_default() += 1;
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self, service: &str, version: &str) -> String {
        let requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        let mut text = String::from(
            "# HELP app_requests_total Requests handled, by route template and status code.\n\
             # TYPE app_requests_total counter\n",
        );
        for ((route, code), count) in requests.iter() {
            let _ = writeln!(
                text,
                "app_requests_total{{service=\"{}\",version=\"{}\",route=\"{}\",code=\"{code}\"}} {count}",
                escape_label(service),
                escape_label(version),
                escape_label(route),
            );
        }
        text
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Where access-log lines go: stdout, one JSON object per line, or memory
/// (tests).
#[derive(Debug, Clone)]
pub enum AccessLog {
    Stdout,
    Memory(Arc<Mutex<Vec<Value>>>),
}

impl AccessLog {
    pub fn memory() -> Self {
        Self::Memory(Arc::default())
    }

    pub fn write(&self, line: Value) {
        match self {
            Self::Stdout => {
                // A closed stdout must not take the service down.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Self::Memory(lines) => lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line),
        }
    }

    /// The lines written so far (always empty for stdout).
    pub fn lines(&self) -> Vec<Value> {
        match self {
            Self::Stdout => Vec::new(),
            Self::Memory(lines) => lines.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z`.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sorted_counters_with_escaped_labels() {
        let metrics = Metrics::default();
        metrics.record("/orders/{id}", 200);
        metrics.record("/orders", 201);
        metrics.record("/orders/{id}", 200);
        let text = metrics.render("order", "v\"1");
        assert!(text.contains("# TYPE app_requests_total counter\n"));
        assert!(text.contains(
            "app_requests_total{service=\"order\",version=\"v\\\"1\",route=\"/orders\",code=\"201\"} 1\n"
        ));
        assert!(text.contains("route=\"/orders/{id}\",code=\"200\"} 2\n"));
    }

    #[test]
    fn timestamp_is_rfc3339_utc() {
        let ts = timestamp();
        assert_eq!(ts.len(), "2025-01-31T12:00:00.123Z".len(), "{ts}");
        assert!(ts.ends_with('Z'));
    }
}
