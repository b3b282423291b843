//! No configuration string and no request can panic the telemetry filter:
//! each string of a full config replaced by hostile text must load or be
//! refused, and whatever loads must label, trace, count and log arbitrary
//! requests.

use meshwasm_shared::config::parse;
use meshwasm_shared::filter_state::{AuthzOutcome, BreakerOutcome, RoutingOutcome};
use meshwasm_shared::fuzz::{self, Request};
use meshwasm_shared::headers;
use meshwasm_shared::metrics::{MetricSink, Metrics};
use meshwasm_shared::shared_data::MemoryStore;
use meshwasm_telemetry::access_log::{should_log, AccessLogLine, Decisions, LINE_TYPE};
use meshwasm_telemetry::cardinality::LabelBudget;
use meshwasm_telemetry::config::{Config, TenantSource};
use meshwasm_telemetry::labels::{method_label, route_index, route_text, Reporter, RequestLabels};
use meshwasm_telemetry::report::{
    claim_value, request_finished, request_started, InFlightKey, MetricIds, Observation,
};
use meshwasm_telemetry::trace::{self, Incoming, TraceContext};
use proxy_wasm::types::MetricType;
use serde_json::{json, Value};

/// Every field, with a claim tenant (the header source is a plain lookup).
fn full_config() -> Value {
    json!({
        "reporter": "inbound",
        "routes": ["/orders/{id}", "/orders", "/static/*", "*.png", "/files/{**}", "*"],
        "tenant": {"claim": "org.tenant"},
        "max_label_values": 5,
        "admit_after": 2,
        "workload_name": "order",
        "peer_headers": true,
        "trace": {"enabled": true, "accept_b3": true, "new_trace_sampling_ratio": 0.5,
                  "response_header": "x-trace-id", "baggage_max_bytes": 100},
        "access_log": {"enabled": true, "sample_ratio": 0.1, "always_log_errors": true}
    })
}

struct Sink;

impl MetricSink for Sink {
    fn define(&mut self, _kind: MetricType, _name: &str) -> Option<u32> {
        Some(1)
    }
    fn add(&mut self, _id: u32, _delta: i64) {}
    fn set(&mut self, _id: u32, _value: u64) {}
    fn record(&mut self, _id: u32, _value: u64) {}
}

fn load(raw: &[u8]) -> Option<Config> {
    parse::<Config>(Some(raw)).ok()
}

/// What the glue does with one request, from its headers to the access log.
fn handle(config: &Config, request: &Request) {
    let header = |name| headers::find(&request.headers, name);
    let claims = request.claims.to_string().into_bytes();
    let tenant = match &config.tenant {
        Some(TenantSource::Header(name)) => header(name).map(str::to_owned),
        Some(TenantSource::Claim(path)) => claim_value(&claims, path),
        None => None,
    };
    let store = MemoryStore::default();
    let mut budget = LabelBudget::new("tenant", config.max_label_values, config.admit_after);
    let tenant = budget.resolve(&store, tenant.as_deref()).label().to_owned();
    let source = budget.resolve(&store, header("x-meshwasm-source-workload"));
    let route = route_index(&config.routes, &request.path);
    let labels = RequestLabels {
        reporter: Reporter::Inbound,
        source_workload: source.label().to_owned(),
        destination_workload: config.workload_name.clone().unwrap_or_default(),
        route: route_text(&config.routes, route).to_owned(),
        method: method_label(&request.method),
        tenant,
    };
    let mut metrics = Metrics::new(Sink);
    let mut ids = MetricIds::default();
    let key = InFlightKey {
        reporter: labels.reporter,
        route,
        method: labels.method,
    };
    let in_flight = ids.in_flight(&mut metrics, key, &labels);
    request_started(&mut metrics, in_flight);
    let incoming = Incoming {
        traceparent: header("traceparent"),
        b3: header("b3"),
        b3_trace_id: header("x-b3-traceid"),
        b3_span_id: header("x-b3-spanid"),
        b3_sampled: header("x-b3-sampled"),
        b3_flags: header("x-b3-flags"),
    };
    let ratio = config.trace.new_trace_sampling_ratio;
    let (context, _) = trace::resolve(&incoming, config.trace.accept_b3, || {
        TraceContext::start(&trace::fallback_random(claims.len() as u64), ratio)
    });
    context.traceparent();
    let code = i64::try_from(request.authority.len()).ok();
    let observation = Observation {
        code,
        duration_ms: 3,
        request_bytes: 10,
        response_bytes: 20,
    };
    request_finished(&mut metrics, &mut ids, in_flight, &labels, &observation);
    should_log(&config.access_log, &context.trace_id, code);
    let decisions = Decisions::from_records(
        header("x-authz").map(|result| AuthzOutcome {
            result: result.into(),
            principal: None,
        }),
        Some(RoutingOutcome {
            rule: header("x-rule").map(Into::into),
            lane: header("x-lane").map(Into::into),
        }),
        header("x-breaker").map(|state| BreakerOutcome {
            key: "payment".into(),
            state: Some(state.into()),
        }),
    );
    AccessLogLine {
        line_type: LINE_TYPE,
        reporter: labels.reporter.as_str(),
        source_workload: &labels.source_workload,
        destination_workload: &labels.destination_workload,
        method: labels.method,
        route: &labels.route,
        code: code.unwrap_or(0),
        duration_ms: 3.0,
        request_bytes: 10,
        response_bytes: 20,
        tenant: &labels.tenant,
        trace_id: &context.trace_id,
        span_id: &context.parent_id,
        trace_origin: "new",
        upstream_cluster: header("x-cluster"),
        upstream_address: None,
        decisions: &decisions,
    }
    .to_json();
}

#[test]
fn full_config_loads() {
    let config = load(full_config().to_string().as_bytes()).unwrap();
    let route = route_index(&config.routes, "/orders/7");
    assert_eq!(route_text(&config.routes, route), "/orders/{id}");
}

#[test]
fn config_strings_never_panic() {
    fuzz::each_string_replaced(&full_config(), 6, |raw, requests| {
        if let Some(config) = load(raw) {
            for request in requests {
                handle(&config, request);
            }
        }
    })
    .unwrap();
}

#[test]
fn arbitrary_config_never_panics() {
    fuzz::arbitrary_configs(&full_config(), 256, |raw| {
        load(raw);
    })
    .unwrap();
}

#[test]
fn requests_never_panic() {
    let config = load(full_config().to_string().as_bytes()).unwrap();
    fuzz::requests(&full_config(), 512, |request| handle(&config, request)).unwrap();
}
