//! proxy-wasm glue: configuration, JWKS fetching on a tick and on unknown
//! `kid`, and the request decision applied to the stream.

use crate::config::{split_uri, AuthzConfig};
use crate::engine::{Allowed, Denial, Engine, Outcome, Request};
use crate::jwks::{self, Reason, RemoteKeySets};
use crate::token::{self, Location};
use meshwasm_shared::filter_state::AuthzOutcome;
use meshwasm_shared::host_headers::Header;
use meshwasm_shared::metrics::{tagged_name, Metrics};
use meshwasm_shared::shared_data::HostStore;
use meshwasm_shared::{filter_state, headers, host_headers, stage, unconfigured};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

const REQUESTS_TOTAL: &str = "meshwasm_authz_requests_total";
const DRY_RUN_TOTAL: &str = "meshwasm_authz_dry_run_denies_total";
const JWKS_FETCHES_TOTAL: &str = "meshwasm_authz_jwks_fetches_total";
const CACHE_TOTAL: &str = "meshwasm_authz_token_cache_total";

/// How often workers look for JWKS updates and due fetches.
const TICK: Duration = Duration::from_secs(1);
/// Largest JWKS document accepted from a fetch.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The metrics an allowed request counts: tagged names built once per VM,
/// ids kept once defined, so the request path hashes no name.
struct AllowMetrics {
    names: [String; 4],
    ids: [Option<u32>; 4],
}

impl AllowMetrics {
    const AUTHENTICATED: usize = 0;
    const ANONYMOUS: usize = 1;
    const CACHE_HIT: usize = 2;
    const CACHE_MISS: usize = 3;

    fn new() -> Self {
        let allowed =
            |reason| tagged_name(REQUESTS_TOTAL, &[("decision", "allow"), ("reason", reason)]);
        let cache = |result| tagged_name(CACHE_TOTAL, &[("result", result)]);
        Self {
            names: [
                allowed("authenticated"),
                allowed("anonymous"),
                cache("hit"),
                cache("miss"),
            ],
            ids: [None; 4],
        }
    }

    /// Counts one request in metric `which` (one of the constants above).
    fn count(&mut self, metrics: &mut Metrics, which: usize) {
        let (Some(slot), Some(name)) = (self.ids.get_mut(which), self.names.get(which)) else {
            return;
        };
        if slot.is_none() {
            *slot = metrics.id(MetricType::Counter, name);
        }
        if let Some(id) = *slot {
            metrics.add(id, 1);
        }
    }
}

/// What the root context and its HTTP contexts share (one per worker).
struct State {
    engine: Engine,
    remote: RemoteKeySets,
    metrics: Metrics,
    allow_metrics: AllowMetrics,
}

impl State {
    /// Reloads a provider's key set when another worker stored a newer one;
    /// `true` when it changed.
    fn sync_keys(&mut self, index: usize) -> bool {
        let Some(provider) = self.engine.config.providers.get(index) else {
            return false;
        };
        if !provider.is_remote() {
            return false;
        }
        self.remote
            .sync(&HostStore, index, provider)
            .unwrap_or_else(|err| {
                log::warn!(
                    "authz: stored JWKS of provider `{}` is unusable: {err}",
                    provider.display_name()
                );
                false
            })
    }

    fn count_fetch(&mut self, index: usize, result: &str) {
        let name = self
            .engine
            .config
            .providers
            .get(index)
            .map(|p| p.display_name().to_owned())
            .unwrap_or_default();
        let metric = tagged_name(
            JWKS_FETCHES_TOTAL,
            &[("provider", &name), ("result", result)],
        );
        self.metrics.count(&metric, 1);
    }

    /// Checks a fetch response and stores it for every worker.
    fn accept_fetch(
        &mut self,
        index: usize,
        status: Option<&str>,
        body: Option<Vec<u8>>,
        now: u64,
    ) {
        let Some(provider) = self.engine.config.providers.get(index) else {
            return;
        };
        let name = provider.display_name().to_owned();
        let outcome = match (status, body) {
            (Some("200"), Some(body)) if body.len() <= MAX_JWKS_BYTES => {
                self.remote.accept(&HostStore, index, provider, &body, now)
            }
            (Some("200"), Some(_)) => Err(format!("larger than {MAX_JWKS_BYTES} bytes")),
            (Some(status), _) => Err(format!("status {status}")),
            (None, _) => Err("no response (timeout or unknown cluster)".to_owned()),
        };
        match outcome {
            Ok(()) => {
                log::info!("authz: fetched JWKS of provider `{name}`");
                self.count_fetch(index, "success");
            }
            Err(reason) => {
                if let Err(err) = jwks::store_failure(&HostStore, &jwks::record_key(provider)) {
                    log::debug!("authz: JWKS failure not recorded: {err}");
                }
                log::warn!("authz: JWKS fetch for provider `{name}` failed ({reason}); keeping the last good keys");
                self.count_fetch(index, "failure");
            }
        }
    }
}

fn now_secs(context: &dyn Context) -> u64 {
    context
        .get_current_time()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

/// Starts a fetch of provider `index`'s JWKS if this worker wins the claim.
fn start_fetch(
    context: &dyn Context,
    state: &State,
    index: usize,
    reason: Reason,
    now: u64,
) -> Option<u32> {
    let provider = state.engine.config.providers.get(index)?;
    let uri = provider.jwks_uri.as_deref()?;
    let cluster = provider.jwks_cluster.as_deref()?;
    let (authority, path) = split_uri(uri)?;
    match jwks::claim(
        &HostStore,
        &jwks::record_key(provider),
        provider,
        reason,
        now,
    ) {
        Ok(true) => {}
        Ok(false) => return None,
        Err(err) => {
            log::warn!("authz: could not claim a JWKS fetch: {err}");
            return None;
        }
    }
    let scheme = if uri.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    let request_headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", authority),
        (":scheme", scheme),
        ("accept", "application/json"),
    ];
    match context.dispatch_http_call(
        cluster,
        request_headers,
        None,
        vec![],
        provider.jwks_fetch_timeout,
    ) {
        Ok(token) => Some(token),
        Err(status) => {
            log::warn!(
                "authz: JWKS fetch for provider `{}` not dispatched to cluster `{cluster}`: {status:?}",
                provider.display_name()
            );
            None
        }
    }
}

fn read_fetch_response(
    context: &dyn Context,
    body_size: usize,
) -> (Option<String>, Option<Vec<u8>>) {
    let status = host_headers::map(MapType::HttpCallResponseHeaders)
        .into_iter()
        .find(|(name, _)| name == ":status")
        .map(|(_, value)| value);
    let body = context.get_http_call_response_body(0, body_size);
    (status, body)
}

#[derive(Default)]
pub struct AuthzRoot {
    state: Option<Rc<RefCell<State>>>,
    /// Fetches in flight: call token → provider index.
    fetches: HashMap<u32, usize>,
}

impl Context for AuthzRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(index) = self.fetches.remove(&token_id) else {
            return;
        };
        let (status, body) = read_fetch_response(self, body_size);
        let now = now_secs(self);
        if let Some(state) = &self.state {
            state
                .borrow_mut()
                .accept_fetch(index, status.as_deref(), body, now);
        }
    }
}

impl RootContext for AuthzRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // The raw bytes also key the verified-token cache (see Engine::new).
        let raw = meshwasm_shared::config::plugin_configuration().unwrap_or_default();
        let config: AuthzConfig = match meshwasm_shared::config::parse(Some(&raw)) {
            Ok(config) => config,
            Err(err) => {
                log::error!("authz: {err}");
                return false;
            }
        };
        let providers = config.providers.len();
        let has_remote = config.providers.iter().any(|p| p.is_remote());
        log::info!(
            "authz: configured with {providers} provider(s), {} rule(s)",
            config.rules.len()
        );
        self.state = Some(Rc::new(RefCell::new(State {
            engine: Engine::new(config, &raw),
            remote: RemoteKeySets::new(providers),
            metrics: Metrics::default(),
            allow_metrics: AllowMetrics::new(),
        })));
        // Fetching starts on the first tick, not here: Envoy also configures
        // throw-away VMs (config validation) whose calls would never complete.
        if has_remote {
            if let Err(status) = stage::set_tick_period(TICK) {
                log::warn!("authz: no tick ({status:?}); JWKS will not be fetched");
            }
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let now = now_secs(self);
        let count = state.borrow().engine.config.providers.len();
        for index in 0..count {
            state.borrow_mut().sync_keys(index);
            if let Some(token) = start_fetch(self, &state.borrow(), index, Reason::Refresh, now) {
                self.fetches.insert(token, index);
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let Some(state) = self.state.clone() else {
            return unconfigured::http_context();
        };
        Some(Box::new(AuthzRequest { state, fetch: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

pub struct AuthzRequest {
    state: Rc<RefCell<State>>,
    /// A JWKS fetch this request waits for: (call token, provider index).
    fetch: Option<(u32, usize)>,
}

/// The request headers, read from Envoy once per decision (decoded in place,
/// borrowing from the host's buffer) and used by everything that follows it
/// (logging a denial, stripping the token).
struct Incoming<'a> {
    headers: Vec<Header<'a>>,
    /// Envoy's `connection.uri_san_peer_certificate`: the mTLS peer's SPIFFE ID.
    peer: Option<String>,
}

impl<'a> Incoming<'a> {
    /// The decoded headers of `raw` ([`host_headers::map_buffer`]) without
    /// the headers only this filter may set: a client's copies are removed
    /// from the request too (anti-spoofing). The peer is read only when a
    /// rule needs it.
    fn read(raw: &'a [u8], engine: &Engine) -> Self {
        let peer = engine
            .reads_peer
            .then(|| {
                proxy_wasm::hostcalls::get_property(vec!["connection", "uri_san_peer_certificate"])
            })
            .and_then(|read| read.ok().flatten())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|uri| !uri.is_empty());
        Self {
            headers: without_owned(host_headers::decode_map(raw), &engine.owned_headers),
            peer,
        }
    }

    fn pseudo(&self, name: &str) -> &str {
        headers::find(&self.headers, name).unwrap_or_default()
    }
}

impl AuthzRequest {
    fn decide(&self, state: &mut State, incoming: &Incoming) -> Outcome {
        let request = Request {
            method: incoming.pseudo(":method"),
            authority: incoming.pseudo(":authority"),
            path: incoming.pseudo(":path"),
            headers: &incoming.headers,
            peer: incoming.peer.as_deref(),
        };
        let now = now_secs(self);
        let State { engine, remote, .. } = state;
        engine.decide(&request, remote.sets(), &HostStore, now)
    }

    fn deny(&self, state: &mut State, denial: &Denial, incoming: &Incoming<'_>) {
        // The query string may carry the token: log the path only.
        let (path, _) = headers::split_path(incoming.pseudo(":path"));
        log::info!(
            "authz: denied {} {path}: {} ({})",
            incoming.pseudo(":method"),
            denial.problem.kind,
            denial.problem.detail
        );
        let reason = denial.problem.kind;
        let metric = tagged_name(REQUESTS_TOTAL, &[("decision", "deny"), ("reason", reason)]);
        state.metrics.count(&metric, 1);
        filter_state::set_record(
            filter_state::AUTHZ,
            &AuthzOutcome {
                result: denial.result().into(),
                principal: None,
            },
        );
        match &denial.challenge {
            Some(challenge) => denial.problem.send(&[("www-authenticate", challenge)]),
            None => denial.problem.send(&[]),
        }
    }

    fn strip_token(&self, location: &Location, incoming: &Incoming<'_>) {
        match location {
            Location::Header { name, .. } => set_request_header(name, None),
            Location::Param(name) => {
                if let (path, Some(query)) = headers::split_path(incoming.pseudo(":path")) {
                    let rest = headers::remove_query_param(query, name);
                    let rewritten = if rest.is_empty() {
                        path.to_owned()
                    } else {
                        format!("{path}?{rest}")
                    };
                    set_request_header(":path", Some(&rewritten));
                }
            }
            Location::Cookie(name) => {
                let joined = incoming
                    .headers
                    .iter()
                    .filter(|(key, _)| key == "cookie")
                    .map(|(_, value)| value.as_ref())
                    .collect::<Vec<_>>()
                    .join("; ");
                let rest = token::remove_cookie(&joined, name);
                set_request_header("cookie", (!rest.is_empty()).then_some(rest.as_str()));
            }
        }
    }

    fn allow(&self, state: &mut State, allowed: Allowed, incoming: &Incoming<'_>) {
        if let Some(location) = &allowed.strip {
            self.strip_token(location, incoming);
        }
        for (name, value) in &allowed.add_headers {
            set_request_header(name, Some(value));
        }
        let result = match &allowed.dry_run_deny {
            Some(rule) => {
                log::info!("authz: dry-run rule `{rule}` would deny this request");
                let metric = tagged_name(DRY_RUN_TOTAL, &[("rule", rule)]);
                state.metrics.count(&metric, 1);
                format!("dry_run_deny:{rule}")
            }
            None => "allow".to_owned(),
        };
        filter_state::set_record(
            filter_state::AUTHZ,
            &AuthzOutcome {
                result: result.into(),
                principal: allowed
                    .verified
                    .as_ref()
                    .map(|verified| verified.principal.as_str().into()),
            },
        );
        let State {
            metrics,
            allow_metrics,
            ..
        } = state;
        let allowed_metric = match &allowed.verified {
            Some(verified) => {
                filter_state::set(filter_state::AUTHZ_CLAIMS, &verified.claims_json);
                let cache_metric = if allowed.cache_hit {
                    AllowMetrics::CACHE_HIT
                } else {
                    AllowMetrics::CACHE_MISS
                };
                allow_metrics.count(metrics, cache_metric);
                AllowMetrics::AUTHENTICATED
            }
            None => AllowMetrics::ANONYMOUS,
        };
        allow_metrics.count(metrics, allowed_metric);
    }

    /// Applies an outcome; `true` when the request may continue now.
    fn apply(
        &mut self,
        state: &mut State,
        outcome: Outcome,
        may_fetch: bool,
        incoming: &Incoming<'_>,
    ) -> bool {
        match outcome {
            Outcome::Allow(allowed) => {
                self.allow(state, allowed, incoming);
                true
            }
            Outcome::Deny(denial) => {
                self.deny(state, &denial, incoming);
                false
            }
            Outcome::UnknownKey { provider } => {
                // Another worker may have fetched the rotated set already:
                // decide again only then.
                if state.sync_keys(provider) {
                    let retried = self.decide(state, incoming);
                    return self.apply(state, retried, may_fetch, incoming);
                }
                let now = now_secs(self);
                if may_fetch {
                    if let Some(token) = start_fetch(self, state, provider, Reason::UnknownKid, now)
                    {
                        self.fetch = Some((token, provider));
                        return false;
                    }
                }
                let denial = state
                    .engine
                    .token_denial(crate::verify::TokenError::UnknownKey);
                self.deny(state, &denial, incoming);
                false
            }
        }
    }
}

impl Context for AuthzRequest {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((expected, provider)) = self.fetch.take() else {
            return;
        };
        if expected != token_id {
            return;
        }
        let (status, body) = read_fetch_response(self, body_size);
        let now = now_secs(self);
        let state = Rc::clone(&self.state);
        let mut state = state.borrow_mut();
        state.accept_fetch(provider, status.as_deref(), body, now);
        let raw_headers = host_headers::map_buffer(MapType::HttpRequestHeaders);
        let incoming = Incoming::read(&raw_headers, &state.engine);
        let outcome = self.decide(&mut state, &incoming);
        if self.apply(&mut state, outcome, false, &incoming) {
            stage::resume_request();
        }
    }
}

impl HttpContext for AuthzRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let state = Rc::clone(&self.state);
        let mut state = state.borrow_mut();
        let raw_headers = host_headers::map_buffer(MapType::HttpRequestHeaders);
        let incoming = Incoming::read(&raw_headers, &state.engine);
        let outcome = self.decide(&mut state, &incoming);
        if self.apply(&mut state, outcome, true, &incoming) {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

/// `headers` without those named in `owned` (lower case), which are also
/// removed from the request: only this filter sets its identity headers.
/// Nothing is written when the client sent none of them.
fn without_owned<'a>(mut headers: Vec<Header<'a>>, owned: &[String]) -> Vec<Header<'a>> {
    let before = headers.len();
    headers.retain(|(name, _)| !owned.iter().any(|o| o.eq_ignore_ascii_case(name)));
    if headers.len() != before {
        for name in owned {
            set_request_header(name, None);
        }
    }
    headers
}

fn set_request_header(name: &str, value: Option<&str>) {
    host_headers::set(MapType::HttpRequestHeaders, name, value);
}
