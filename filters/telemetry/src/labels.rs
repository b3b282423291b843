//! Metric names, label (stat tag) names and the label values this filter
//! derives from a request: route template, method, response code and class.

use crate::config::RouteTemplate;
use meshwasm_shared::metrics::tagged_name;

/// Value of a label whose real value is unknown (no workload metadata, no tenant).
pub const UNKNOWN: &str = "unknown";
/// Value of a label whose real value was folded away (unmatched route,
/// non-standard method, value past the cardinality bound).
pub const OTHER: &str = "other";

pub const REQUESTS_TOTAL: &str = "meshwasm_requests_total";
pub const REQUEST_DURATION: &str = "meshwasm_request_duration_milliseconds";
pub const REQUEST_BYTES: &str = "meshwasm_request_bytes";
pub const RESPONSE_BYTES: &str = "meshwasm_response_bytes";
pub const REQUESTS_IN_FLIGHT: &str = "meshwasm_requests_in_flight";
pub const FOLDED_VALUES_TOTAL: &str = "meshwasm_telemetry_folded_values_total";

pub const TAG_REPORTER: &str = "reporter";
pub const TAG_SOURCE_WORKLOAD: &str = "source_workload";
pub const TAG_DESTINATION_WORKLOAD: &str = "destination_workload";
pub const TAG_ROUTE: &str = "route";
pub const TAG_METHOD: &str = "method";
pub const TAG_RESPONSE_CODE_CLASS: &str = "response_code_class";
pub const TAG_RESPONSE_CODE: &str = "response_code";
pub const TAG_TENANT: &str = "tenant";
pub const TAG_FOLDED_LABEL: &str = "label";

/// Every stat tag this filter emits: each needs an Envoy `stats_tags` rule
/// (Istio: `extraStatTags`) to become a Prometheus label.
pub const TAG_NAMES: [&str; 9] = [
    TAG_REPORTER,
    TAG_SOURCE_WORKLOAD,
    TAG_DESTINATION_WORKLOAD,
    TAG_ROUTE,
    TAG_METHOD,
    TAG_RESPONSE_CODE_CLASS,
    TAG_RESPONSE_CODE,
    TAG_TENANT,
    TAG_FOLDED_LABEL,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    Inbound,
    Outbound,
    Unknown,
}

impl Reporter {
    /// From Envoy's `listener_direction` attribute (`envoy.config.core.v3.TrafficDirection`).
    pub fn from_listener_direction(direction: Option<i64>) -> Self {
        match direction {
            Some(1) => Self::Inbound,
            Some(2) => Self::Outbound,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Unknown => UNKNOWN,
        }
    }
}

/// The index of the first configured template matching `path` (query
/// string ignored); `None` when none does (label `other`).
pub fn route_index(routes: &[RouteTemplate], path: &str) -> Option<usize> {
    let (path, _query) = meshwasm_shared::headers::split_path(path);
    routes.iter().position(|route| route.pattern.matches(path))
}

/// The label of the route at `index` ([`route_index`]).
pub fn route_text(routes: &[RouteTemplate], index: Option<usize>) -> &str {
    index
        .and_then(|index| routes.get(index))
        .map_or(OTHER, |route| route.label.as_str())
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Standard methods keep their name; anything else (a client can send any
/// token) is `other`.
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or(OTHER)
}

/// `200` → (`"200"`, `"2xx"`); no response (reset, timeout before headers) → (`"0"`, `"unknown"`).
pub fn response_code_labels(code: Option<i64>) -> (String, &'static str) {
    match code {
        Some(code @ 100..=599) => {
            let class = match code / 100 {
                1 => "1xx",
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                _ => "5xx",
            };
            (code.to_string(), class)
        }
        _ => ("0".to_owned(), UNKNOWN),
    }
}

/// The labels of one request's metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub destination_workload: String,
    pub route: String,
    pub method: &'static str,
    pub tenant: String,
}

impl RequestLabels {
    /// `name` tagged with every label; the response code is only known at the end.
    pub fn completed_name(&self, name: &str, code: &str, class: &str) -> String {
        tagged_name(
            name,
            &[
                (TAG_REPORTER, self.reporter.as_str()),
                (TAG_SOURCE_WORKLOAD, &self.source_workload),
                (TAG_DESTINATION_WORKLOAD, &self.destination_workload),
                (TAG_ROUTE, &self.route),
                (TAG_METHOD, self.method),
                (TAG_RESPONSE_CODE_CLASS, class),
                (TAG_RESPONSE_CODE, code),
                (TAG_TENANT, &self.tenant),
            ],
        )
    }

    /// The in-flight gauge's name: labels known when the request starts and
    /// that stay the same until it ends.
    pub fn in_flight_name(&self) -> String {
        tagged_name(
            REQUESTS_IN_FLIGHT,
            &[
                (TAG_REPORTER, self.reporter.as_str()),
                (TAG_ROUTE, &self.route),
                (TAG_METHOD, self.method),
            ],
        )
    }
}

pub fn folded_name(label: &str) -> String {
    tagged_name(FOLDED_VALUES_TOTAL, &[(TAG_FOLDED_LABEL, label)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwasm_shared::path_pattern::PathPattern;

    fn routes(templates: &[&str]) -> Vec<RouteTemplate> {
        templates
            .iter()
            .map(|t| RouteTemplate {
                label: t.to_string(),
                pattern: PathPattern::parse(t).unwrap(),
            })
            .collect()
    }

    fn route_label<'a>(routes: &'a [RouteTemplate], path: &str) -> &'a str {
        route_text(routes, route_index(routes, path))
    }

    #[test]
    fn first_matching_template_names_the_route() {
        let table = routes(&["/orders/{id}", "/orders", "/orders/{id}/{**}", "/static/*"]);
        assert_eq!(route_label(&table, "/orders/42"), "/orders/{id}");
        assert_eq!(
            route_label(&table, "/orders/42?token=secret"),
            "/orders/{id}"
        );
        assert_eq!(route_label(&table, "/orders"), "/orders");
        assert_eq!(route_label(&table, "/orders?x=1"), "/orders");
        assert_eq!(
            route_label(&table, "/orders/42/items/3"),
            "/orders/{id}/{**}"
        );
        assert_eq!(route_label(&table, "/static/app.js"), "/static/*");
        assert_eq!(route_label(&table, "/users/1"), OTHER);
        assert_eq!(route_label(&table, ""), OTHER);
        assert_eq!(route_label(&[], "/orders"), OTHER);
        assert_eq!(route_index(&table, "/orders?x=1"), Some(1));
        assert_eq!(route_index(&table, "/users/1"), None);
        assert_eq!(route_text(&table, Some(3)), "/static/*");
        assert_eq!(route_text(&table, Some(9)), OTHER);
    }

    #[test]
    fn non_standard_methods_fold() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("get"), OTHER);
        assert_eq!(method_label("PROPFIND"), OTHER);
        assert_eq!(method_label(""), OTHER);
    }

    #[test]
    fn response_code_and_class() {
        assert_eq!(response_code_labels(Some(200)), ("200".into(), "2xx"));
        assert_eq!(response_code_labels(Some(101)), ("101".into(), "1xx"));
        assert_eq!(response_code_labels(Some(302)), ("302".into(), "3xx"));
        assert_eq!(response_code_labels(Some(429)), ("429".into(), "4xx"));
        assert_eq!(response_code_labels(Some(503)), ("503".into(), "5xx"));
        assert_eq!(response_code_labels(Some(0)), ("0".into(), UNKNOWN));
        assert_eq!(response_code_labels(Some(999)), ("0".into(), UNKNOWN));
        assert_eq!(response_code_labels(None), ("0".into(), UNKNOWN));
    }

    #[test]
    fn reporter_from_listener_direction() {
        assert_eq!(
            Reporter::from_listener_direction(Some(1)),
            Reporter::Inbound
        );
        assert_eq!(
            Reporter::from_listener_direction(Some(2)),
            Reporter::Outbound
        );
        assert_eq!(
            Reporter::from_listener_direction(Some(0)),
            Reporter::Unknown
        );
        assert_eq!(Reporter::from_listener_direction(None), Reporter::Unknown);
    }

    #[test]
    fn label_encoding_uses_istio_tag_convention() {
        let labels = RequestLabels {
            reporter: Reporter::Inbound,
            source_workload: "order".into(),
            destination_workload: "payment".into(),
            route: "/orders/{id}".into(),
            method: "POST",
            tenant: "acme".into(),
        };
        assert_eq!(
            labels.completed_name(REQUESTS_TOTAL, "201", "2xx"),
            "reporter=.=inbound;.;source_workload=.=order;.;destination_workload=.=payment;.;\
             route=.=/orders/{id};.;method=.=POST;.;response_code_class=.=2xx;.;\
             response_code=.=201;.;tenant=.=acme;.;meshwasm_requests_total"
        );
        assert_eq!(
            labels.in_flight_name(),
            "reporter=.=inbound;.;route=.=/orders/{id};.;method=.=POST;.;meshwasm_requests_in_flight"
        );
        assert_eq!(
            folded_name("tenant"),
            "label=.=tenant;.;meshwasm_telemetry_folded_values_total"
        );
    }

    #[test]
    fn every_tag_has_a_distinct_name() {
        let mut names = TAG_NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TAG_NAMES.len());
    }
}
