//! Proxy-wasm glue: reads the request and Envoy properties, asks the shared
//! breakers, answers rejections, records outcomes, writes filter state and
//! metrics. Every decision lives in the host-free modules.

use crate::breaker::{Admission, Outcome, Rejection, State, Ticket, Transition};
use crate::config::{Config, Fallback};
use crate::policy::{self, Active, KeySource, Policies, Request, Response};
use crate::store::{Admit, Breakers, Namespace};
use meshwasm_shared::filter_state::BreakerOutcome;
use meshwasm_shared::headers::{self, split_path};
use meshwasm_shared::host_headers::Header;
use meshwasm_shared::metrics::{tagged_name, Metrics};
use meshwasm_shared::problem::Problem;
use meshwasm_shared::shared_data::HostStore;
use meshwasm_shared::{filter_state, host_headers, unconfigured};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// How often each worker refreshes state gauges and expires idle keys.
const TICK: Duration = Duration::from_secs(5);

/// A validated configuration and what is derived from it.
struct Loaded {
    policies: Policies,
    namespace: Namespace,
    max_keys: u32,
    idle_expiry_ms: u64,
    max_gauge_keys: usize,
}

impl Loaded {
    fn breakers(&self) -> Breakers<'_, HostStore> {
        Breakers {
            store: &HostStore,
            namespace: &self.namespace,
            max_keys: self.max_keys,
            idle_expiry_ms: self.idle_expiry_ms,
        }
    }
}

/// Per-VM state shared by the root and HTTP contexts of one worker.
#[derive(Default)]
struct Shared {
    metrics: Metrics,
    /// Keys with a state gauge: the first `max_gauge_keys` ever seen.
    gauge_keys: Vec<String>,
}

/// Gives live keys a state gauge while fewer than `max` keys have one. A key
/// keeps its gauge once given (Envoy never deletes a stat; an expired key's
/// reads closed), so the bound holds across expiry and new keys.
fn admit_gauge_keys(gauge_keys: &mut Vec<String>, live: Vec<String>, max: usize) {
    for key in live {
        if gauge_keys.len() >= max {
            return;
        }
        if !gauge_keys.contains(&key) {
            gauge_keys.push(key);
        }
    }
}

impl Shared {
    fn set_state_gauge(&mut self, policy: &str, key: &str, state: State) {
        if self.gauge_keys.iter().any(|k| k == key) {
            let name = tagged_name(
                "meshwasm_breaker_state",
                &[("policy", policy), ("breaker_key", key)],
            );
            self.metrics.gauge_set(&name, state.gauge());
        }
    }

    fn count(&mut self, name: &str, tags: &[(&str, &str)]) {
        self.metrics.count(&tagged_name(name, tags), 1);
    }
}

pub struct BreakerRoot {
    loaded: Option<Rc<Loaded>>,
    shared: Rc<RefCell<Shared>>,
}

impl BreakerRoot {
    pub fn new() -> Self {
        Self {
            loaded: None,
            shared: Rc::new(RefCell::new(Shared::default())),
        }
    }
}

impl Default for BreakerRoot {
    fn default() -> Self {
        Self::new()
    }
}

fn property_string(path: &[&str]) -> Option<String> {
    match hostcalls::get_property(path.to_vec()) {
        Ok(Some(bytes)) if !bytes.is_empty() => Some(String::from_utf8_lossy(&bytes).into_owned()),
        _ => None,
    }
}

/// Integer properties (`response.code`, `response.flags`) are 8 bytes, little endian.
fn property_u64(path: &[&str]) -> Option<u64> {
    match hostcalls::get_property(path.to_vec()) {
        Ok(Some(bytes)) => bytes
            .first_chunk::<8>()
            .map(|chunk| u64::from_le_bytes(*chunk)),
        _ => None,
    }
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

impl Context for BreakerRoot {}

impl RootContext for BreakerRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = meshwasm_shared::config::plugin_configuration();
        let config: Config = match meshwasm_shared::config::parse(raw.as_deref()) {
            Ok(config) => config,
            Err(err) => {
                log::error!("circuit-breaker: {err}");
                return false;
            }
        };
        let plugin = [
            property_string(&["plugin_name"]),
            property_string(&["plugin_root_id"]),
        ]
        .map(Option::unwrap_or_default)
        .join("/");
        self.loaded = Some(Rc::new(Loaded {
            policies: Policies::new(&config),
            namespace: Namespace::new(&plugin, raw.as_deref().unwrap_or_default()),
            max_keys: config.max_keys,
            idle_expiry_ms: u64::try_from(config.idle_expiry.as_millis()).unwrap_or(u64::MAX),
            max_gauge_keys: config.max_gauge_keys as usize,
        }));
        if let Err(status) = meshwasm_shared::stage::set_tick_period(TICK) {
            log::warn!("circuit-breaker: no tick ({status:?}); idle keys will not expire");
        }
        log::info!(
            "circuit-breaker: configured {} policies{}",
            config.policies.len(),
            if config.default_policy.is_some() {
                " and a default"
            } else {
                ""
            }
        );
        true
    }

    fn on_tick(&mut self) {
        let Some(loaded) = &self.loaded else { return };
        let breakers = loaded.breakers();
        let now = now_ms();
        if let Err(err) = breakers.sweep(now) {
            log::debug!("circuit-breaker: sweep: {err}");
        }
        let Ok(keys) = breakers.keys() else { return };
        let mut shared = self.shared.borrow_mut();
        admit_gauge_keys(&mut shared.gauge_keys, keys, loaded.max_gauge_keys);
        for key in shared.gauge_keys.clone() {
            let state = breakers
                .state(&key, now)
                .ok()
                .flatten()
                .unwrap_or(State::Closed);
            let policy = key.split('|').next().unwrap_or_default().to_owned();
            shared.set_state_gauge(&policy, &key, state);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let Some(loaded) = self.loaded.clone() else {
            return unconfigured::http_context();
        };
        Some(Box::new(BreakerStream {
            loaded,
            shared: Rc::clone(&self.shared),
            admitted: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A request the breaker let through, until its outcome is recorded.
struct InFlight {
    active: Rc<Active>,
    key: String,
    ticket: Ticket,
    started_ms: u64,
    /// The state written to filter state at admission.
    state: State,
}

struct BreakerStream {
    loaded: Rc<Loaded>,
    shared: Rc<RefCell<Shared>>,
    admitted: Option<InFlight>,
}

/// Key parts of the current request: its headers, already read (one map
/// read, decoded in place, costs less than two single-header reads), the
/// rest read on demand.
struct Host<'a> {
    request_headers: Vec<Header<'a>>,
}

impl KeySource for Host<'_> {
    fn authority(&self) -> Option<String> {
        self.header(":authority")
    }
    fn cluster(&self) -> Option<String> {
        property_string(&["xds", "cluster_name"])
    }
    fn header(&self, name: &str) -> Option<String> {
        headers::find(&self.request_headers, name).map(str::to_owned)
    }
    fn claims(&self) -> Option<Vec<u8>> {
        filter_state::get(filter_state::AUTHZ_CLAIMS)
    }
}

fn retry_after_seconds(rejection: Rejection) -> u64 {
    match rejection {
        Rejection::Open { retry_after_ms } => retry_after_ms.div_ceil(1000).max(1),
        Rejection::HalfOpenFull | Rejection::Bulkhead => 1,
    }
}

fn rejection_problem(status: u16, policy: &str, rejection: Rejection) -> Problem {
    match rejection {
        Rejection::Open { retry_after_ms } => Problem::new(
            status,
            "circuit-open",
            "Circuit open",
            format!(
                "circuit breaker `{policy}` is open; the next call is tried in {}s",
                retry_after_ms.div_ceil(1000).max(1)
            ),
        ),
        Rejection::HalfOpenFull => Problem::new(
            status,
            "circuit-half-open",
            "Circuit half-open",
            format!("circuit breaker `{policy}` is testing the upstream with its probe calls"),
        ),
        Rejection::Bulkhead => Problem::new(
            status,
            "bulkhead-full",
            "Too many concurrent calls",
            format!("circuit breaker `{policy}` has its maximum of concurrent calls in flight"),
        ),
    }
}

/// The breaker-state header value of a rejection.
fn rejection_state(rejection: Rejection) -> &'static str {
    match rejection {
        Rejection::Open { .. } => "open",
        Rejection::HalfOpenFull => "half_open",
        Rejection::Bulkhead => "bulkhead_full",
    }
}

fn send_fallback(fallback: &Fallback, state_header: &str, state: &str) {
    let mut headers: Vec<(&str, &str)> = fallback
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    if !state_header.is_empty() {
        headers.push((state_header, state));
    }
    let body = (!fallback.body.is_empty()).then_some(fallback.body.as_bytes());
    if let Err(status) = hostcalls::send_http_response(u32::from(fallback.status), headers, body) {
        log::error!("circuit-breaker: could not send fallback: {status:?}");
    }
}

impl BreakerStream {
    fn note_transition(
        &self,
        active: &Active,
        key: &str,
        transition: Option<Transition>,
        state: State,
    ) {
        let policy = active.policy.name.as_str();
        let mut shared = self.shared.borrow_mut();
        match transition {
            Some(Transition::Tripped) => {
                log::info!("circuit-breaker: `{key}` opened");
                shared.count("meshwasm_breaker_trips_total", &[("policy", policy)]);
            }
            Some(Transition::HalfOpened) => log::info!("circuit-breaker: `{key}` half-open"),
            Some(Transition::Closed) => log::info!("circuit-breaker: `{key}` closed"),
            None => return,
        }
        shared.set_state_gauge(policy, key, state);
    }

    fn reject(&self, active: &Active, rejection: Rejection) {
        let policy = &active.policy;
        let state = rejection_state(rejection);
        {
            let mut shared = self.shared.borrow_mut();
            match rejection {
                Rejection::Bulkhead => shared.count(
                    "meshwasm_breaker_bulkhead_rejections_total",
                    &[("policy", &policy.name)],
                ),
                _ => shared.count(
                    "meshwasm_breaker_rejections_total",
                    &[("policy", &policy.name), ("reason", state)],
                ),
            }
        }
        let state_header = policy.rejection.state_header.as_str();
        if let Some(fallback) = &policy.fallback {
            send_fallback(fallback, state_header, state);
            return;
        }
        let retry_after = retry_after_seconds(rejection).to_string();
        let mut headers = vec![("retry-after", retry_after.as_str())];
        if !state_header.is_empty() {
            headers.push((state_header, state));
        }
        rejection_problem(policy.rejection.status, &policy.name, rejection).send(&headers);
    }

    /// Records the admitted call's outcome once, for response `status`;
    /// `with_details`: read Envoy's failure flags and details too.
    fn finish(&mut self, status: Option<u16>, with_details: bool) {
        let Some(in_flight) = self.admitted.take() else {
            return;
        };
        let loaded = Rc::clone(&self.loaded);
        let (flags, details) = if with_details {
            (
                property_u64(&["response", "flags"]).unwrap_or(0),
                property_string(&["response", "code_details"]),
            )
        } else {
            (0, None)
        };
        let response = Response {
            status,
            flags,
            code_details: details.as_deref(),
        };
        let now = now_ms();
        let outcome =
            policy::classify(&in_flight.active.policy.failure, &response).map(|failure| Outcome {
                failure,
                duration_ms: now.saturating_sub(in_flight.started_ms),
            });
        let finished = loaded.breakers().finish(
            &in_flight.key,
            &in_flight.active.spec,
            in_flight.ticket,
            outcome,
            now,
        );
        match finished {
            Ok(Some((transition, state))) => {
                if state != in_flight.state {
                    record_outcome(&in_flight.key, Some(state));
                }
                self.note_transition(&in_flight.active, &in_flight.key, transition, state);
            }
            Ok(None) => {}
            Err(err) => log::warn!("circuit-breaker: could not record outcome: {err}"),
        }
    }
}

/// Glue: the breaker's record in filter state (access logs, telemetry).
fn record_outcome(key: &str, state: Option<State>) {
    filter_state::set_record(
        filter_state::BREAKER,
        &BreakerOutcome {
            key: key.into(),
            state: state.map(|state| state.as_str().into()),
        },
    );
}

impl Context for BreakerStream {}

impl HttpContext for BreakerStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let loaded = Rc::clone(&self.loaded);
        let raw_headers = host_headers::map_buffer(MapType::HttpRequestHeaders);
        let host = Host {
            request_headers: host_headers::decode_map(&raw_headers),
        };
        let pseudo = |name| headers::find(&host.request_headers, name).unwrap_or_default();
        let (path, _) = split_path(pseudo(":path"));
        let request = Request {
            method: pseudo(":method"),
            authority: pseudo(":authority"),
            path,
        };
        let Some((active, route)) = loaded.policies.select(&request) else {
            return Action::Continue;
        };
        let key = policy::breaker_key(&active, &route, &host);
        let now = now_ms();
        let decision = loaded.breakers().admit(&key, &active.spec, now);
        record_outcome(
            &key,
            match &decision {
                Ok(Admit::Decided { state, .. }) => Some(*state),
                _ => None,
            },
        );
        match decision {
            Ok(Admit::Decided {
                admission,
                transition,
                state,
            }) => {
                self.note_transition(&active, &key, transition, state);
                match admission {
                    Admission::Admitted(ticket) => {
                        if ticket.probe {
                            self.shared.borrow_mut().count(
                                "meshwasm_breaker_half_open_probes_total",
                                &[("policy", &active.policy.name)],
                            );
                        }
                        self.admitted = Some(InFlight {
                            active,
                            key,
                            ticket,
                            started_ms: now,
                            state,
                        });
                        Action::Continue
                    }
                    Admission::Rejected(rejection) => {
                        self.reject(&active, rejection);
                        Action::Pause
                    }
                }
            }
            Ok(Admit::OverCapacity) => {
                self.shared.borrow_mut().count(
                    "meshwasm_breaker_untracked_total",
                    &[("policy", &active.policy.name)],
                );
                Action::Continue
            }
            Err(err) => {
                // Fail open: a breaker that cannot read its state lets calls through.
                log::warn!("circuit-breaker: shared state unavailable for `{key}`: {err}");
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.admitted.is_none() {
            return Action::Continue;
        }
        let status = host_headers::value(MapType::HttpResponseHeaders, ":status")
            .and_then(|status| status.parse::<u16>().ok());
        self.finish(status, policy::failure_details_matter_at_headers(status));
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.admitted.is_none() {
            return;
        }
        // No response headers came: a reset, a timeout, or the client left.
        let status = property_u64(&["response", "code"]).and_then(|code| u16::try_from(code).ok());
        self.finish(status, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_gauges_stay_bounded_as_keys_expire_and_new_ones_come() {
        let mut gauge_keys = Vec::new();
        let keys = |range: std::ops::Range<usize>| range.map(|n| format!("p|k{n}")).collect();
        admit_gauge_keys(&mut gauge_keys, keys(0..3), 5);
        admit_gauge_keys(&mut gauge_keys, keys(2..4), 5);
        assert_eq!(gauge_keys, ["p|k0", "p|k1", "p|k2", "p|k3"]);
        // The first keys expired; every tick brings new ones.
        for tick in 1..100 {
            admit_gauge_keys(&mut gauge_keys, keys(tick * 10..tick * 10 + 10), 5);
        }
        assert_eq!(gauge_keys.len(), 5);
        assert_eq!(gauge_keys.last().map(String::as_str), Some("p|k10"));
    }
}
