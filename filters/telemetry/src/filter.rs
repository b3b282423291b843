//! Glue: proxy-wasm root and HTTP contexts. Everything decided here comes from
//! the host-independent modules; this file only reads and writes the host.

use crate::access_log::{should_log, AccessLogLine, Decisions, LINE_TYPE};
use crate::cardinality::{LabelBudget, Resolved};
use crate::config::{Config, ReporterSetting, TenantSource};
use crate::labels::{
    folded_name, method_label, route_index, route_text, Reporter, RequestLabels,
    TAG_DESTINATION_WORKLOAD, TAG_METHOD, TAG_SOURCE_WORKLOAD, TAG_TENANT, UNKNOWN,
};
use crate::report::{
    claim_value, decode_i64, request_finished, request_started, InFlightKey, MetricIds, Observation,
};
use crate::trace::{self, Incoming, Origin, RandomPool, TraceContext};
use meshwasm_shared::host_headers::Header;
use meshwasm_shared::metrics::Metrics;
use meshwasm_shared::shared_data::HostStore;
use meshwasm_shared::{filter_state, headers, host_headers, host_log, unconfigured};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

/// Request header naming the calling workload (set by the outbound sidecar).
pub const SOURCE_WORKLOAD_HEADER: &str = "x-meshwasm-source-workload";
/// Response header naming the answering workload (set by the inbound sidecar).
pub const WORKLOAD_HEADER: &str = "x-meshwasm-workload";
/// Filter state this filter writes: the request's trace id.
pub const TRACE_ID_KEY: &str = "meshwasm.telemetry.trace_id";

/// Per-VM state shared by all of the VM's HTTP contexts.
struct VmState {
    config: Config,
    metrics: Metrics,
    metric_ids: MetricIds,
    tenants: LabelBudget,
    sources: LabelBudget,
    destinations: LabelBudget,
    workload: Option<String>,
    /// Fixed by the config, else read per request (see [`VmState::reporter`]).
    reporter: Option<Reporter>,
    random: RandomPool,
    ids_issued: u64,
}

impl VmState {
    fn new(config: Config) -> Self {
        let budget = |label| LabelBudget::new(label, config.max_label_values, config.admit_after);
        Self {
            tenants: budget(TAG_TENANT),
            sources: budget(TAG_SOURCE_WORKLOAD),
            destinations: budget(TAG_DESTINATION_WORKLOAD),
            metrics: Metrics::default(),
            metric_ids: MetricIds::default(),
            workload: config.workload_name.clone(),
            reporter: match config.reporter {
                ReporterSetting::Inbound => Some(Reporter::Inbound),
                ReporterSetting::Outbound => Some(Reporter::Outbound),
                ReporterSetting::Auto => None,
            },
            config,
            random: RandomPool::default(),
            ids_issued: 0,
        }
    }

    /// The configured reporter, else (`reporter: auto`) the direction of the
    /// listener this request came in on, read per request: on Envoy 1.40 one
    /// root context per worker serves every listener the plugin is on (a
    /// sidecar's inbound and outbound alike), so it cannot be cached per plugin.
    /// `xds.listener_direction` on Envoy 1.36 and 1.40; the top-level
    /// `listener_direction` of older docs is not found there.
    fn reporter(&self) -> Reporter {
        self.reporter.unwrap_or_else(|| {
            Reporter::from_listener_direction(i64_property(vec!["xds", "listener_direction"]))
        })
    }

    /// This proxy's workload: configured, else Istio node metadata
    /// (`WORKLOAD_NAME`, then the `app` label), else `unknown`. Envoy 1.36
    /// and 1.40 serve the node under `xds.node` only (`node` is not found).
    fn workload(&mut self) -> String {
        if let Some(name) = &self.workload {
            return name.clone();
        }
        let name = string_property(vec!["xds", "node", "metadata", "WORKLOAD_NAME"])
            .or_else(|| string_property(vec!["xds", "node", "metadata", "LABELS", "app"]))
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| UNKNOWN.to_owned());
        self.workload = Some(name.clone());
        name
    }

    /// Resolves a bounded label value, counting the fold when it happens.
    fn bounded(&mut self, label: &'static str, raw: Option<&str>) -> String {
        let budget = match label {
            TAG_TENANT => &mut self.tenants,
            TAG_SOURCE_WORKLOAD => &mut self.sources,
            _ => &mut self.destinations,
        };
        let resolved = budget.resolve(&HostStore, raw);
        if resolved == Resolved::Folded {
            self.metrics.count(&folded_name(label), 1);
        }
        resolved.label().to_owned()
    }

    fn random_ids(&mut self) -> [u8; 24] {
        match self.random.take(getrandom::fill) {
            Ok(bytes) => bytes,
            Err(err) => {
                self.ids_issued = self.ids_issued.wrapping_add(1);
                log::warn!("random source failed ({err}); trace ids from time and counter");
                trace::fallback_random(now_nanos() ^ self.ids_issued.rotate_left(32))
            }
        }
    }
}

/// Glue: the host's clock, in nanoseconds since the epoch (0 if unreadable).
fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

fn string_property(path: Vec<&str>) -> Option<String> {
    let bytes = hostcalls::get_property(path).ok()??;
    String::from_utf8(bytes).ok()
}

fn i64_property(path: Vec<&str>) -> Option<i64> {
    decode_i64(&hostcalls::get_property(path).ok()??)
}

fn u64_property(path: Vec<&str>) -> u64 {
    i64_property(path).map_or(0, |value| value.max(0) as u64)
}

#[derive(Default)]
pub struct TelemetryRoot {
    state: Option<Rc<RefCell<VmState>>>,
}

impl Context for TelemetryRoot {}

impl RootContext for TelemetryRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match meshwasm_shared::config::parse::<Config>(
            meshwasm_shared::config::plugin_configuration().as_deref(),
        ) {
            Ok(config) => {
                self.state = Some(Rc::new(RefCell::new(VmState::new(config))));
                true
            }
            Err(err) => {
                log::error!("{err}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let Some(state) = self.state.clone() else {
            return unconfigured::http_context();
        };
        Some(Box::new(TelemetryHttp {
            state,
            request: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What the request headers decided, kept until `on_log`.
struct RequestState {
    labels: RequestLabels,
    in_flight: Option<u32>,
    /// Clock when the request headers arrived (ns), for the duration.
    started: u64,
    /// The response's `:status`, once its headers passed.
    code: Option<i64>,
    trace: Option<(TraceContext, Origin)>,
    /// The caller is a meshwasm sidecar (it named itself).
    peer_named_itself: bool,
    destination_resolved: bool,
}

struct TelemetryHttp {
    state: Rc<RefCell<VmState>>,
    request: Option<RequestState>,
}

impl Context for TelemetryHttp {}

impl TelemetryHttp {
    fn tenant(source: Option<&TenantSource>, request_headers: &[Header<'_>]) -> Option<String> {
        match source? {
            TenantSource::Header(name) => headers::find(request_headers, name).map(str::to_owned),
            TenantSource::Claim(path) => {
                claim_value(&filter_state::get(filter_state::AUTHZ_CLAIMS)?, path)
            }
        }
    }

    fn trace(
        &self,
        vm: &mut VmState,
        request_headers: &[Header<'_>],
    ) -> Option<(TraceContext, Origin)> {
        let trace_config = &vm.config.trace;
        if !trace_config.enabled {
            return None;
        }
        let header = |name| headers::find(request_headers, name);
        let incoming = Incoming {
            traceparent: header(trace::TRACEPARENT),
            b3: header(trace::B3),
            b3_trace_id: header(trace::B3_TRACE_ID),
            b3_span_id: header(trace::B3_SPAN_ID),
            b3_sampled: header(trace::B3_SAMPLED),
            b3_flags: header(trace::B3_FLAGS),
        };
        let (accept_b3, ratio) = (
            trace_config.accept_b3,
            trace_config.new_trace_sampling_ratio,
        );
        let max_baggage = trace_config.baggage_max_bytes;
        let (context, origin) = trace::resolve(&incoming, accept_b3, || {
            TraceContext::start(&vm.random_ids(), ratio)
        });
        if origin != Origin::W3c {
            // tracestate belongs to the traceparent it came with, which was absent or invalid.
            if header(trace::TRACESTATE).is_some() {
                host_headers::set(MapType::HttpRequestHeaders, trace::TRACESTATE, None);
            }
            host_headers::set(
                MapType::HttpRequestHeaders,
                trace::TRACEPARENT,
                Some(&context.traceparent()),
            );
        }
        if header(trace::BAGGAGE).is_some_and(|baggage| baggage.len() > max_baggage) {
            log::debug!("baggage over {max_baggage} bytes removed");
            host_headers::set(MapType::HttpRequestHeaders, trace::BAGGAGE, None);
        }
        self.set_property(vec![TRACE_ID_KEY], Some(context.trace_id.as_bytes()));
        Some((context, origin))
    }
}

impl HttpContext for TelemetryHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let started = now_nanos();
        let state = Rc::clone(&self.state);
        let mut vm = state.borrow_mut();
        let vm = &mut *vm;
        let reporter = vm.reporter();
        let workload = vm.workload();
        let peer_headers = vm.config.peer_headers;

        // One read of the header map, decoded in place, instead of a host call per header.
        let raw_headers = host_headers::map_buffer(MapType::HttpRequestHeaders);
        let request_headers = host_headers::decode_map(&raw_headers);
        let header = |name| headers::find(&request_headers, name);
        let route_index = route_index(&vm.config.routes, header(":path").unwrap_or_default());
        let route = route_text(&vm.config.routes, route_index).to_owned();
        let method = method_label(header(":method").unwrap_or_default());
        if method == crate::labels::OTHER {
            vm.metrics.count(&folded_name(TAG_METHOD), 1);
        }
        let tenant = Self::tenant(vm.config.tenant.as_ref(), &request_headers);
        let tenant = vm.bounded(TAG_TENANT, tenant.as_deref());

        let mut peer_named_itself = false;
        let (source_workload, destination_workload) = if reporter == Reporter::Outbound {
            if peer_headers {
                host_headers::set(
                    MapType::HttpRequestHeaders,
                    SOURCE_WORKLOAD_HEADER,
                    Some(&workload),
                );
            }
            (workload, UNKNOWN.to_owned())
        } else {
            let caller = if peer_headers {
                let caller = header(SOURCE_WORKLOAD_HEADER).map(str::to_owned);
                if caller.is_some() {
                    host_headers::set(MapType::HttpRequestHeaders, SOURCE_WORKLOAD_HEADER, None);
                }
                caller
            } else {
                None
            };
            peer_named_itself = caller.is_some();
            (vm.bounded(TAG_SOURCE_WORKLOAD, caller.as_deref()), workload)
        };

        let labels = RequestLabels {
            reporter,
            source_workload,
            destination_workload,
            route,
            method,
            tenant,
        };
        let key = InFlightKey {
            reporter,
            route: route_index,
            method,
        };
        let in_flight = vm.metric_ids.in_flight(&mut vm.metrics, key, &labels);
        request_started(&mut vm.metrics, in_flight);
        let trace = self.trace(vm, &request_headers);
        self.request = Some(RequestState {
            destination_resolved: reporter != Reporter::Outbound,
            labels,
            in_flight,
            started,
            code: None,
            trace,
            peer_named_itself,
        });
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(mut request) = self.request.take() else {
            return Action::Continue;
        };
        let state = Rc::clone(&self.state);
        let mut vm = state.borrow_mut();
        // One read of the response headers: the status for the metrics and
        // the peer's workload name.
        let raw_headers = host_headers::map_buffer(MapType::HttpResponseHeaders);
        let response_headers = host_headers::decode_map(&raw_headers);
        request.code =
            headers::find(&response_headers, ":status").and_then(|code| code.parse().ok());
        if vm.config.peer_headers {
            if !request.destination_resolved {
                let answered_by = headers::find(&response_headers, WORKLOAD_HEADER);
                if answered_by.is_some() {
                    host_headers::set(MapType::HttpResponseHeaders, WORKLOAD_HEADER, None);
                }
                request.labels.destination_workload =
                    vm.bounded(TAG_DESTINATION_WORKLOAD, answered_by);
                request.destination_resolved = true;
            } else if request.peer_named_itself {
                host_headers::set(
                    MapType::HttpResponseHeaders,
                    WORKLOAD_HEADER,
                    Some(&request.labels.destination_workload),
                );
            }
        }
        if let (Some(name), Some((context, _))) = (&vm.config.trace.response_header, &request.trace)
        {
            host_headers::set(MapType::HttpResponseHeaders, name, Some(&context.trace_id));
        }
        self.request = Some(request);
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(request) = self.request.take() else {
            return;
        };
        let state = Rc::clone(&self.state);
        let mut vm = state.borrow_mut();
        let vm = &mut *vm;
        let duration_ns = now_nanos().saturating_sub(request.started);
        let observation = Observation {
            code: request.code,
            duration_ms: duration_ns / 1_000_000,
            request_bytes: u64_property(vec!["request", "total_size"]),
            response_bytes: u64_property(vec!["response", "total_size"]),
        };
        request_finished(
            &mut vm.metrics,
            &mut vm.metric_ids,
            request.in_flight,
            &request.labels,
            &observation,
        );

        let Some((context, origin)) = &request.trace else {
            return;
        };
        if !should_log(&vm.config.access_log, &context.trace_id, observation.code)
            || !host_log::enabled(LogLevel::Info)
        {
            return;
        }
        let decisions = Decisions::from_records(
            filter_state::record(filter_state::AUTHZ),
            filter_state::record(filter_state::ROUTING),
            filter_state::record(filter_state::BREAKER),
        );
        let upstream_cluster = string_property(vec!["xds", "cluster_name"]);
        let upstream_address = string_property(vec!["upstream", "address"]);
        let labels = &request.labels;
        let line = AccessLogLine {
            line_type: LINE_TYPE,
            reporter: labels.reporter.as_str(),
            source_workload: &labels.source_workload,
            destination_workload: &labels.destination_workload,
            method: labels.method,
            route: &labels.route,
            code: observation.code.unwrap_or(0),
            duration_ms: duration_ns as f64 / 1e6,
            request_bytes: observation.request_bytes,
            response_bytes: observation.response_bytes,
            tenant: &labels.tenant,
            trace_id: &context.trace_id,
            span_id: &context.parent_id,
            trace_origin: match origin {
                Origin::W3c => "w3c",
                Origin::B3 => "b3",
                Origin::New => "new",
            },
            upstream_cluster: upstream_cluster.as_deref(),
            upstream_address: upstream_address.as_deref(),
            decisions: &decisions,
        };
        log::info!("{}", line.to_json());
    }
}
