//! proxy-wasm glue: reads the request, asks the [`Router`] and applies the
//! decision (Envoy picks the route again after the header writes).

use crate::config::{ClaimsSource, Config};
use crate::engine::{Decision, Outcome, RequestView, Router};
use meshwasm_shared::filter_state::RoutingOutcome;
use meshwasm_shared::host_headers::Header;
use meshwasm_shared::metrics::{tagged_name, FastMap, Metrics};
use meshwasm_shared::{filter_state, headers, host_headers, unconfigured};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType};
use std::cell::RefCell;
use std::rc::Rc;

pub const DECISIONS_METRIC: &str = "meshwasm_routing_decisions_total";
/// Label value when no rule matched or no lane was chosen.
const NONE: &str = "none";

#[derive(Default)]
pub struct RoutingRoot {
    router: Option<Rc<Router>>,
    metrics: Rc<RefCell<DecisionMetrics>>,
}

/// The decision counter's ids per (rule, lane) label pair, so a request
/// neither builds nor hashes its tagged name. Bounded: rules are configured
/// and lanes outside the config count as `other`.
#[derive(Default)]
struct DecisionMetrics {
    metrics: Metrics,
    /// rule → lane → id.
    ids: FastMap<String, FastMap<String, u32>>,
}

impl DecisionMetrics {
    fn count(&mut self, rule: &str, lane: &str) {
        let cached = self
            .ids
            .get(rule)
            .and_then(|lanes| lanes.get(lane))
            .copied();
        let id = cached.or_else(|| {
            let name = tagged_name(DECISIONS_METRIC, &[("rule", rule), ("lane", lane)]);
            let id = self.metrics.id(MetricType::Counter, &name)?;
            self.ids
                .entry(rule.to_owned())
                .or_default()
                .insert(lane.to_owned(), id);
            Some(id)
        });
        if let Some(id) = id {
            self.metrics.add(id, 1);
        }
    }
}

impl Context for RoutingRoot {}

impl RootContext for RoutingRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match meshwasm_shared::config::parse::<Config>(
            meshwasm_shared::config::plugin_configuration().as_deref(),
        ) {
            Ok(config) => {
                let router = Router::new(config);
                log::info!(
                    "routing configured: owned headers {:?}",
                    router.owned_headers()
                );
                self.router = Some(Rc::new(router));
                true
            }
            Err(err) => {
                log::error!("{err}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let Some(router) = self.router.clone() else {
            return unconfigured::http_context();
        };
        Some(Box::new(RoutingHttp {
            router,
            metrics: Rc::clone(&self.metrics),
            debug_value: None,
            debug_sent: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RoutingHttp {
    router: Rc<Router>,
    metrics: Rc<RefCell<DecisionMetrics>>,
    /// `rule=<r>; lane=<l>` for the debug response header.
    debug_value: Option<String>,
    debug_sent: bool,
}

impl Context for RoutingHttp {}

impl HttpContext for RoutingHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // One read of the header map, decoded in place.
        let raw_headers = host_headers::map_buffer(MapType::HttpRequestHeaders);
        let mut request_headers = host_headers::decode_map(&raw_headers);
        self.strip_owned_headers(&mut request_headers);
        let claims = self.verified_claims(&request_headers);
        let pseudo = |name: &str| headers::find(&request_headers, name).unwrap_or("");
        let scheme = headers::find(&request_headers, "x-forwarded-proto")
            .unwrap_or_else(|| pseudo(":scheme"));
        let view = RequestView {
            method: pseudo(":method"),
            path: pseudo(":path"),
            authority: pseudo(":authority"),
            scheme: if scheme.is_empty() { "http" } else { scheme },
            headers: &request_headers,
            claims: claims.as_ref(),
        };
        let decision = self.router.decide(&view);
        self.record(&decision);

        let action = match &decision.outcome {
            Outcome::Forward(mutations) => {
                for name in &mutations.remove_headers {
                    set_request_header(name, None);
                }
                for (name, value) in &mutations.set_headers {
                    set_request_header(name, Some(value));
                }
                if let Some(path) = &mutations.path {
                    set_request_header(":path", Some(path));
                }
                if let Some(authority) = &mutations.authority {
                    set_request_header(":authority", Some(authority));
                }
                if let Some(baggage) = &mutations.baggage {
                    let value = (!baggage.is_empty()).then_some(baggage.as_str());
                    set_request_header("baggage", value);
                }
                Action::Continue
            }
            Outcome::Redirect { status, location } => {
                self.respond(*status, vec![("location", location.as_str())], "");
                Action::Pause
            }
            Outcome::Respond {
                status,
                body,
                headers,
            } => {
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.respond(*status, headers, body);
                Action::Pause
            }
        };
        // No explicit route-cache clear: for this module's ABI (0.2.1) Envoy
        // clears the cache on every request-header write above (README,
        // "Route cache").
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(header), Some(value)) = (self.router.debug_header(), &self.debug_value) {
            if !self.debug_sent {
                host_headers::add(MapType::HttpResponseHeaders, header, value);
            }
        }
        Action::Continue
    }
}

impl RoutingHttp {
    /// Removes every owned header the client sent (anti-spoofing).
    fn strip_owned_headers(&self, request_headers: &mut Vec<Header<'_>>) {
        let owned = self.router.owned_headers();
        let before = request_headers.len();
        request_headers.retain(|(name, _)| !owned.iter().any(|o| o.eq_ignore_ascii_case(name)));
        if request_headers.len() != before {
            for name in owned {
                set_request_header(name, None);
            }
        }
    }

    fn verified_claims(&self, request_headers: &[Header<'_>]) -> Option<serde_json::Value> {
        if !self.router.uses_claims() {
            return None;
        }
        let raw = match self.router.claims_source() {
            ClaimsSource::FilterState(key) => filter_state::get(key)?,
            ClaimsSource::Header(name) => headers::find(request_headers, name)?.as_bytes().to_vec(),
        };
        serde_json::from_slice(&raw)
            .map_err(|err| log::debug!("routing: claims are not JSON: {err}"))
            .ok()
    }

    /// Filter state, debug header and the decision counter.
    fn record(&mut self, decision: &Decision) {
        let rule = decision.rule.as_deref().unwrap_or(NONE);
        let lane = decision
            .lane
            .as_ref()
            .map_or(NONE, |lane| lane.value.as_str());
        if decision.rule.is_some() || decision.lane.is_some() {
            filter_state::set_record(
                filter_state::ROUTING,
                &RoutingOutcome {
                    rule: decision.rule.as_deref().map(Into::into),
                    lane: decision
                        .lane
                        .as_ref()
                        .map(|lane| lane.value.as_str().into()),
                },
            );
        }
        if self.router.debug_header().is_some() {
            self.debug_value = Some(format!("rule={rule}; lane={lane}"));
        }
        let lane_label = if lane == NONE || self.router.is_known_lane(lane) {
            lane
        } else {
            "other"
        };
        self.metrics.borrow_mut().count(rule, lane_label);
    }

    fn respond(&mut self, status: u16, response_headers: Vec<(&str, &str)>, body: &str) {
        let router = Rc::clone(&self.router);
        let mut response_headers = response_headers;
        if let (Some(header), Some(value)) = (router.debug_header(), &self.debug_value) {
            response_headers.push((header, value.as_str()));
            self.debug_sent = true;
        }
        if let Err(status_code) = hostcalls::send_http_response(
            u32::from(status),
            response_headers,
            Some(body.as_bytes()),
        ) {
            log::error!("routing: could not send {status} response: {status_code:?}");
        }
    }
}

fn set_request_header(name: &str, value: Option<&str>) {
    host_headers::set(MapType::HttpRequestHeaders, name, value);
}
