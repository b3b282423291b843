//! No configuration string and no request can panic the circuit-breaker
//! filter: each string of a full config replaced by hostile text must load or
//! be refused, and whatever loads must select, key, admit and record
//! arbitrary requests.

use meshwasm_circuit_breaker::breaker::{Admission, Outcome};
use meshwasm_circuit_breaker::config::Config;
use meshwasm_circuit_breaker::policy::{self, KeySource, Policies, Request, Response};
use meshwasm_circuit_breaker::store::{Admit, Breakers, Namespace};
use meshwasm_shared::config::parse;
use meshwasm_shared::fuzz::{self, Request as Hostile};
use meshwasm_shared::headers::{self, split_path};
use meshwasm_shared::metrics::tagged_name;
use meshwasm_shared::shared_data::MemoryStore;
use serde_json::{json, Value};

const NOW_MS: u64 = 1_800_000_000_000;

/// Every kind of field: each key source, both windows, fallback, a default policy.
fn full_config() -> Value {
    json!({
        "policies": [
            {"name": "payment",
             "match": {"hosts": ["payment*", "*.svc.cluster.local", "pay:8080"],
                       "paths": ["/charge", "/orders/{id}", "/files/{**}"], "methods": ["POST"]},
             "key": [{"source": "authority"}, {"source": "route"}, {"source": "cluster"},
                     {"source": "header", "name": "x-tenant"}, {"source": "claim", "name": "org.id"}],
             "trip": {"consecutive_failures": 1, "failure_rate_percent": 40,
                      "slow_call_rate_percent": 80, "slow_call_duration": "300ms", "minimum_calls": 1,
                      "window": {"kind": "time", "duration": "10s", "buckets": 5}},
             "failure": {"server_errors": true, "connection_failures": true, "status_codes": [429]},
             "open": {"duration": "2s", "backoff_multiplier": 1.5, "max_duration": "20s"},
             "half_open": {"permitted_calls": 1},
             "bulkhead": {"max_concurrent": 2},
             "rejection": {"status": 429, "state_header": "x-meshwasm-breaker"},
             "fallback": {"status": 200, "headers": {"content-type": "application/json"},
                          "body": "{}"}}
        ],
        "default_policy": {"name": "default", "key": [{"source": "authority"}],
                           "trip": {"minimum_calls": 2, "window": {"kind": "count", "size": 4}}},
        "max_keys": 10,
        "idle_expiry": "1m",
        "max_gauge_keys": 5
    })
}

struct Source<'a>(&'a Hostile);

impl KeySource for Source<'_> {
    fn authority(&self) -> Option<String> {
        Some(self.0.authority.clone())
    }
    fn cluster(&self) -> Option<String> {
        Some(self.0.scheme.clone())
    }
    fn header(&self, name: &str) -> Option<String> {
        headers::find(&self.0.headers, name).map(str::to_owned)
    }
    fn claims(&self) -> Option<Vec<u8>> {
        Some(self.0.claims.to_string().into_bytes())
    }
}

struct Loaded {
    config: Config,
    policies: Policies,
    namespace: Namespace,
    store: MemoryStore,
}

fn load(raw: &[u8]) -> Option<Loaded> {
    let config: Config = parse(Some(raw)).ok()?;
    Some(Loaded {
        policies: Policies::new(&config),
        namespace: Namespace::new("circuit-breaker/circuit_breaker", raw),
        store: MemoryStore::default(),
        config,
    })
}

/// What the glue does with one request: select, key, admit, then record a
/// response made of the request's own text.
fn handle(loaded: &Loaded, request: &Hostile) {
    let (path, _) = split_path(&request.path);
    let selected = loaded.policies.select(&Request {
        method: &request.method,
        authority: &request.authority,
        path,
    });
    let Some((active, route)) = selected else {
        return;
    };
    let key = policy::breaker_key(&active, &route, &Source(request));
    tagged_name(
        "meshwasm_breaker_state",
        &[("policy", &active.policy.name), ("breaker_key", &key)],
    );
    let breakers = Breakers {
        store: &loaded.store,
        namespace: &loaded.namespace,
        max_keys: loaded.config.max_keys,
        idle_expiry_ms: u64::try_from(loaded.config.idle_expiry.as_millis()).unwrap_or(u64::MAX),
    };
    let Ok(Admit::Decided {
        admission: Admission::Admitted(ticket),
        ..
    }) = breakers.admit(&key, &active.spec, NOW_MS)
    else {
        return;
    };
    let status = u16::try_from(request.path.len() % 600).ok();
    let response = Response {
        status,
        flags: request.method.len() as u64,
        code_details: request.headers.first().map(|(_, value)| value.as_str()),
    };
    let outcome = policy::classify(&active.policy.failure, &response).map(|failure| Outcome {
        failure,
        duration_ms: request.authority.len() as u64,
    });
    breakers
        .finish(&key, &active.spec, ticket, outcome, NOW_MS + 5)
        .ok();
    breakers.sweep(NOW_MS + 120_000).ok();
}

#[test]
fn full_config_guards_a_matching_request() {
    let raw = full_config().to_string();
    parse::<Config>(Some(raw.as_bytes())).unwrap();
    let loaded = load(raw.as_bytes()).unwrap();
    let selected = loaded.policies.select(&Request {
        method: "POST",
        authority: "payment:8080",
        path: "/charge",
    });
    assert_eq!(selected.unwrap().0.policy.name, "payment");
}

#[test]
fn config_strings_never_panic() {
    fuzz::each_string_replaced(&full_config(), 6, |raw, requests| {
        if let Some(loaded) = load(raw) {
            for request in requests {
                handle(&loaded, request);
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
    let loaded = load(full_config().to_string().as_bytes()).unwrap();
    fuzz::requests(&full_config(), 512, |request| handle(&loaded, request)).unwrap();
}
