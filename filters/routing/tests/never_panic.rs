//! No configuration string and no request can panic the routing filter: each
//! string of a full config replaced by hostile text must load or be refused,
//! and whatever loads must decide arbitrary requests.

use meshwasm_routing::config::Config;
use meshwasm_routing::engine::{RequestView, Router};
use meshwasm_shared::config::parse;
use meshwasm_shared::fuzz::{self, Request};
use meshwasm_shared::host_headers::Header;
use serde_json::{json, Value};
use std::borrow::Cow;

/// Every kind of field: matchers of each source, each action, splits, rollouts.
fn full_config() -> Value {
    json!({
        "owned_headers": ["x-canary"],
        "lane": {"header": "x-lane", "baggage_key": "lane", "propagate": true,
                 "accept_baggage": true, "allowed": ["v1", "v2"]},
        "claims": {"filter_state": "meshwasm.authz.claims"},
        "debug_header": "x-meshwasm-route",
        "rules": [
            {"name": "beta", "match": {
                "path": "/orders/{id}", "methods": ["GET"], "hosts": ["*.example.com", "shop:8080"],
                "headers": [{"name": "x-env", "exact": "staging"}, {"name": "x-v", "regex": "^v[0-9]+$"}],
                "query_params": [{"name": "debug", "present": true}],
                "cookies": [{"name": "uid", "prefix": "u-"}],
                "claims": [{"name": "org.tier", "suffix": "gold"}, {"name": "beta", "exact": "true"}],
                "baggage": [{"name": "team", "contains": "pay", "invert": true}]},
             "action": {"lane": "v2", "set_headers": {"x-canary": "1"}, "remove_headers": ["x-debug"],
                        "authority": "inventory:8080",
                        "path_rewrite": {"prefix": {"from": "/orders", "to": "/v2/orders"}}}},
            {"name": "regex-rewrite", "match": {"path_regex": "^/api/(?P<rest>.*)$"},
             "action": {"path_rewrite": {"regex": {"pattern": "^/api/(.*)$", "substitution": "/$1"}}}},
            {"name": "split", "action": {"split": {"key": {"header": "x-user"}, "seed": "exp-1",
                "missing_key_variant": "control",
                "variants": [{"name": "treatment", "lane": "v2", "weight": 12.5,
                              "set_headers": {"x-variant": "t"}},
                             {"name": "control", "lane": "v1", "weight": 87.5}]}}},
            {"name": "claim-rollout", "action": {"lane": "v1",
                "rollout": {"key": {"claim": "sub"}, "percent": 50, "seed": "r"}}},
            {"name": "moved", "match": {"path": "/old*"},
             "action": {"redirect": {"scheme": "https", "host": "new.example.com", "port": 8443,
                                     "path_rewrite": {"prefix": {"from": "/old", "to": "/new"}},
                                     "status": 301, "strip_query": true}}},
            {"name": "maint", "match": {"path": "*.php"},
             "action": {"direct_response": {"status": 503, "body": "down",
                                            "content_type": "text/plain",
                                            "headers": {"retry-after": "60"}},
                        "rollout": {"key": {"cookie": "uid"}, "percent": 0.01}}}
        ]
    })
}

fn load(raw: &[u8]) -> Option<Router> {
    parse::<Config>(Some(raw)).ok().map(Router::new)
}

fn decide(router: &Router, request: &Request) {
    let headers: Vec<Header> = request
        .headers
        .iter()
        .map(|(name, value)| (Cow::Borrowed(name.as_str()), Cow::Borrowed(value.as_str())))
        .collect();
    router.decide(&RequestView {
        method: &request.method,
        path: &request.path,
        authority: &request.authority,
        scheme: &request.scheme,
        headers: &headers,
        claims: Some(&request.claims),
    });
}

#[test]
fn full_config_loads() {
    assert!(load(full_config().to_string().as_bytes()).is_some());
}

#[test]
fn config_strings_never_panic() {
    fuzz::each_string_replaced(&full_config(), 4, |raw, requests| {
        if let Some(router) = load(raw) {
            for request in requests {
                decide(&router, request);
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
    let router = load(full_config().to_string().as_bytes()).unwrap();
    fuzz::requests(&full_config(), 512, |request| decide(&router, request)).unwrap();
}
