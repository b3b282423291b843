use super::*;
use meshwasm_shared::config::parse;
use serde_json::json;
use std::borrow::Cow;

fn router(config: Value) -> Router {
    let raw = config.to_string();
    Router::new(parse::<Config>(Some(raw.as_bytes())).unwrap())
}

struct Req {
    method: &'static str,
    path: String,
    authority: &'static str,
    headers: Vec<Header<'static>>,
    claims: Option<Value>,
}

fn get(path: &str) -> Req {
    Req {
        method: "GET",
        path: path.to_owned(),
        authority: "inventory:8080",
        headers: Vec::new(),
        claims: None,
    }
}

impl Req {
    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((Cow::Owned(name.to_owned()), Cow::Owned(value.to_owned())));
        self
    }
    fn claims(mut self, claims: Value) -> Self {
        self.claims = Some(claims);
        self
    }
    fn decide(&self, router: &Router) -> Decision {
        router.decide(&RequestView {
            method: self.method,
            path: &self.path,
            authority: self.authority,
            scheme: "http",
            headers: &self.headers,
            claims: self.claims.as_ref(),
        })
    }
}

fn mutations(decision: &Decision) -> &Mutations {
    match &decision.outcome {
        Outcome::Forward(mutations) => mutations,
        other => panic!("expected forward, got {other:?}"),
    }
}

fn lane(decision: &Decision) -> Option<&str> {
    decision.lane.as_ref().map(|lane| lane.value.as_str())
}

fn canary(percent: f64) -> Value {
    json!({"rules": [
        {"name": "beta", "match": {"claims": [{"name": "beta", "exact": "true"}]},
         "action": {"lane": "v2"}},
        {"name": "canary", "action": {"split": {"key": {"header": "x-user"}, "variants": [
            {"lane": "v2", "weight": percent}, {"lane": "v1", "weight": 100.0 - percent}]}}}
    ]})
}

#[test]
fn first_matching_rule_wins_and_sets_lane_header_and_baggage() {
    let router = router(canary(20.0));
    let decision = get("/items").claims(json!({"beta": true})).decide(&router);
    assert_eq!(decision.rule.as_deref(), Some("beta"));
    assert_eq!(lane(&decision), Some("v2"));
    let m = mutations(&decision);
    assert_eq!(
        m.set_headers,
        vec![("x-meshwasm-lane".to_owned(), "v2".to_owned())]
    );
    assert_eq!(m.baggage.as_deref(), Some("meshwasm-lane=v2"));
}

#[test]
fn sticky_split_is_stable_and_near_target() {
    let router = router(canary(20.0));
    let mut v2 = 0;
    for user in 0..1_000 {
        let request = get("/items").header("x-user", &format!("user-{user}"));
        let first = request.decide(&router);
        assert_eq!(first.rule.as_deref(), Some("canary"));
        for _ in 0..3 {
            assert_eq!(request.decide(&router), first, "user-{user} moved");
        }
        if lane(&first) == Some("v2") {
            assert_eq!(first.variant.as_deref(), Some("v2"));
            v2 += 1;
        }
    }
    assert!((170..=230).contains(&v2), "{v2} of 1000 users in v2");
}

#[test]
fn claims_match_booleans_strings_arrays_and_dotted_paths() {
    let router = router(json!({"rules": [
        {"name": "group", "match": {"claims": [{"name": "realm.groups", "exact": "beta"}]},
         "action": {"lane": "beta"}},
        {"name": "url-claim", "match": {"claims": [{"name": "https://x.io/tier", "exact": "gold"}]},
         "action": {"lane": "gold"}}
    ]}));
    let by = |claims: Value| lane(&get("/").claims(claims).decide(&router)).map(str::to_owned);
    assert_eq!(
        by(json!({"realm": {"groups": ["a", "beta"]}})).as_deref(),
        Some("beta")
    );
    assert_eq!(
        by(json!({"realm": {"groups": "beta"}})).as_deref(),
        Some("beta")
    );
    assert_eq!(
        by(json!({"https://x.io/tier": "gold"})).as_deref(),
        Some("gold")
    );
    assert_eq!(by(json!({"realm": {"groups": ["alpha"]}})), None);
    assert_eq!(lane(&get("/").decide(&router)), None);
}

#[test]
fn matches_on_path_method_host_query_cookie_and_baggage() {
    let router = router(json!({"rules": [{"name": "all", "match": {
        "path": "/orders/{id}",
        "path_regex": "^/orders/[0-9]+$",
        "methods": ["get"],
        "hosts": ["inventory*"],
        "headers": [{"name": "x-env", "exact": "test"}],
        "query_params": [{"name": "q", "exact": "a b"}],
        "cookies": [{"name": "uid", "prefix": "u-"}],
        "baggage": [{"name": "tenant", "exact": "acme"}]
    }, "action": {"lane": "v2"}}]}));
    let full = || {
        get("/orders/42?q=a%20b")
            .header("x-env", "test")
            .header("cookie", "a=1; uid=u-7")
            .header("baggage", "tenant=acme;p=1")
    };
    assert_eq!(full().decide(&router).rule.as_deref(), Some("all"));
    let mut wrong_path = full();
    wrong_path.path = "/orders/x?q=a%20b".to_owned();
    assert_eq!(wrong_path.decide(&router).rule, None);
    let mut wrong_method = full();
    wrong_method.method = "POST";
    assert_eq!(wrong_method.decide(&router).rule, None);
    let mut wrong_host = full();
    wrong_host.authority = "payment";
    assert_eq!(wrong_host.decide(&router).rule, None);
    let no_cookie = get("/orders/42?q=a%20b")
        .header("x-env", "test")
        .header("baggage", "tenant=acme");
    assert_eq!(no_cookie.decide(&router).rule, None);
    let wrong_baggage = get("/orders/42?q=a%20b")
        .header("x-env", "test")
        .header("cookie", "uid=u-7")
        .header("baggage", "tenant=other");
    assert_eq!(wrong_baggage.decide(&router).rule, None);
}

#[test]
fn incoming_baggage_lane_is_followed_when_no_rule_sets_one() {
    let router = router(json!({}));
    let decision = get("/")
        .header("baggage", "meshwasm-lane=v2,other=1")
        .decide(&router);
    assert_eq!(decision.rule, None);
    assert_eq!(
        decision.lane,
        Some(Lane {
            value: "v2".to_owned(),
            source: LaneSource::Baggage
        })
    );
    let m = mutations(&decision);
    assert_eq!(
        m.set_headers,
        vec![("x-meshwasm-lane".to_owned(), "v2".to_owned())]
    );
    // Already in baggage: the header is left alone.
    assert_eq!(m.baggage, None);
}

#[test]
fn a_rule_lane_overrides_the_baggage_lane() {
    let router = router(json!({"rules": [{"name": "pin", "action": {"lane": "v1"}}]}));
    let decision = get("/")
        .header("baggage", "meshwasm-lane=v2,other=1")
        .decide(&router);
    assert_eq!(lane(&decision), Some("v1"));
    assert_eq!(
        mutations(&decision).baggage.as_deref(),
        Some("meshwasm-lane=v1,other=1")
    );
}

#[test]
fn at_the_edge_client_baggage_lanes_are_removed() {
    let router = router(json!({"lane": {"accept_baggage": false}}));
    let decision = get("/")
        .header("baggage", "meshwasm-lane=v2,other=1")
        .decide(&router);
    assert_eq!(decision.lane, None);
    let m = mutations(&decision);
    assert!(m.set_headers.is_empty());
    assert_eq!(m.baggage.as_deref(), Some("other=1"));

    let only_lane = get("/")
        .header("baggage", "meshwasm-lane=v2")
        .decide(&router);
    assert_eq!(mutations(&only_lane).baggage.as_deref(), Some(""));
}

#[test]
fn baggage_lanes_outside_the_allowed_list_or_malformed_are_ignored() {
    let router = router(json!({"lane": {"allowed": ["v1", "v2"]}}));
    for baggage in [
        "meshwasm-lane=v9",
        "meshwasm-lane=%zz",
        "meshwasm-lane=a%20b",
    ] {
        let decision = get("/").header("baggage", baggage).decide(&router);
        assert_eq!(decision.lane, None, "{baggage}");
    }
}

#[test]
fn no_propagation_keeps_baggage_untouched() {
    let router = router(json!({"lane": {"propagate": false},
        "rules": [{"name": "r", "action": {"lane": "v2"}}]}));
    let decision = get("/").decide(&router);
    assert_eq!(mutations(&decision).baggage, None);
    assert_eq!(lane(&decision), Some("v2"));
}

#[test]
fn rollout_gates_the_rule_for_a_share_of_users() {
    let router = router(json!({"rules": [
        {"name": "new-ui", "action": {"rollout": {"key": {"cookie": "uid"}, "percent": 10},
            "set_headers": {"x-ui": "new"}}},
        {"name": "rest", "action": {"set_headers": {"x-ui": "old"}}}
    ]}));
    let mut inside = 0;
    for user in 0..2_000 {
        let request = get("/").header("cookie", &format!("uid={user}"));
        let decision = request.decide(&router);
        if decision.rule.as_deref() == Some("new-ui") {
            inside += 1;
        }
        assert_eq!(request.decide(&router), decision);
    }
    assert!((150..=250).contains(&inside), "{inside} of 2000");
    // No key: outside the rollout.
    assert_eq!(get("/").decide(&router).rule.as_deref(), Some("rest"));
}

#[test]
fn split_without_key_uses_fallback_variant_or_request_id() {
    let router = router(json!({"rules": [{"name": "s", "action": {"split": {
        "key": {"claim": "sub"}, "missing_key_variant": "stable",
        "variants": [{"name": "stable", "lane": "v1", "weight": 50},
                     {"name": "canary", "lane": "v2", "weight": 50}]}}}]}));
    for _ in 0..5 {
        assert_eq!(get("/").decide(&router).variant.as_deref(), Some("stable"));
    }
    let router = self::router(json!({"rules": [{"name": "s", "action": {"split": {
        "key": {"claim": "sub"},
        "variants": [{"lane": "v1", "weight": 50}, {"lane": "v2", "weight": 50}]}}}]}));
    let lanes: std::collections::BTreeSet<String> = (0..50)
        .map(|i| {
            let decision = get("/")
                .header("x-request-id", &format!("req-{i}"))
                .decide(&router);
            lane(&decision).unwrap().to_owned()
        })
        .collect();
    assert_eq!(lanes.len(), 2, "request ids spread over both variants");
}

#[test]
fn split_by_claim_and_variant_headers() {
    let router = router(json!({"rules": [{"name": "s", "action": {"split": {
        "key": {"claim": "sub"},
        "variants": [{"name": "a", "weight": 100, "set_headers": {"x-variant": "a"}}]}}}]}));
    let decision = get("/").claims(json!({"sub": "alice"})).decide(&router);
    assert_eq!(decision.variant.as_deref(), Some("a"));
    assert_eq!(decision.lane, None);
    assert_eq!(
        mutations(&decision).set_headers,
        vec![("x-variant".to_owned(), "a".to_owned())]
    );
}

#[test]
fn path_rewrites_keep_the_query() {
    let router = router(json!({"rules": [
        {"name": "prefix", "match": {"path": "/shop/*"},
         "action": {"path_rewrite": {"prefix": {"from": "/shop/", "to": "/"}}}},
        {"name": "regex", "match": {"path": "/v1/orders/{id}"},
         "action": {"path_rewrite": {"regex": {"pattern": "^/v1/orders/([0-9]+)$",
                                                "substitution": "/orders/$1/details"}},
                    "authority": "order-v2:8080"}}
    ]}));
    let m = get("/shop/items?x=1").decide(&router);
    assert_eq!(mutations(&m).path.as_deref(), Some("/items?x=1"));
    let m = get("/v1/orders/42").decide(&router);
    assert_eq!(mutations(&m).path.as_deref(), Some("/orders/42/details"));
    assert_eq!(mutations(&m).authority.as_deref(), Some("order-v2:8080"));
}

#[test]
fn rewrite_path_edge_cases() {
    let prefix = |from: &str, to: &str| PathRewrite::Prefix {
        from: from.to_owned(),
        to: to.to_owned(),
    };
    assert_eq!(rewrite_path(&prefix("/api", "/"), "/api/x"), "/x");
    assert_eq!(rewrite_path(&prefix("/api", "/v2"), "/api/x"), "/v2/x");
    assert_eq!(rewrite_path(&prefix("/api/", "/"), "/api/"), "/");
    assert_eq!(rewrite_path(&prefix("/api", "/v2"), "/other"), "/other");
    let regex = PathRewrite::Regex {
        pattern: crate::matcher::Pattern::new("^/a").unwrap(),
        substitution: "b".to_owned(),
    };
    assert_eq!(rewrite_path(&regex, "/a/c"), "/b/c");
}

#[test]
fn redirects_build_the_location() {
    let router = router(json!({"rules": [
        {"name": "https", "match": {"path": "/login"},
         "action": {"redirect": {"scheme": "https", "status": 308}}},
        {"name": "moved", "match": {"path": "/old/*"},
         "action": {"redirect": {"host": "new.example.com", "port": 8443,
                    "path_rewrite": {"prefix": {"from": "/old/", "to": "/new/"}}, "strip_query": true}}}
    ]}));
    let decision = get("/login?next=/a").decide(&router);
    assert_eq!(
        decision.outcome,
        Outcome::Redirect {
            status: 308,
            location: "https://inventory:8080/login?next=/a".to_owned()
        }
    );
    let decision = get("/old/page?x=1").decide(&router);
    assert_eq!(
        decision.outcome,
        Outcome::Redirect {
            status: 302,
            location: "http://new.example.com:8443/new/page".to_owned()
        }
    );
}

#[test]
fn redirect_ports_keep_ipv6_hosts_bracketed() {
    let router = router(json!({"rules": [{"name": "tls",
        "action": {"redirect": {"scheme": "https", "port": 8443}}}]}));
    for authority in ["[::1]:8080", "::1"] {
        let request = Req {
            authority,
            ..get("/a")
        };
        assert_eq!(
            request.decide(&router).outcome,
            Outcome::Redirect {
                status: 302,
                location: "https://[::1]:8443/a".to_owned()
            },
            "{authority}"
        );
    }
}

#[test]
fn direct_responses() {
    let router = router(
        json!({"rules": [{"name": "maint", "match": {"path": "/maintenance"},
        "action": {"direct_response": {"status": 503, "body": "later",
                   "headers": {"retry-after": "60"}}}}]}),
    );
    let decision = get("/maintenance").decide(&router);
    assert_eq!(decision.rule.as_deref(), Some("maint"));
    assert_eq!(
        decision.outcome,
        Outcome::Respond {
            status: 503,
            body: "later".to_owned(),
            headers: vec![
                (
                    "content-type".to_owned(),
                    "text/plain; charset=utf-8".to_owned()
                ),
                ("retry-after".to_owned(), "60".to_owned())
            ]
        }
    );
}

#[test]
fn owned_headers_include_lane_and_every_set_header() {
    let router = router(json!({"owned_headers": ["X-Internal"], "rules": [
        {"name": "a", "action": {"set_headers": {"x-a": "1"}}},
        {"name": "b", "action": {"split": {"key": {"header": "x-user"},
            "variants": [{"name": "x", "weight": 100, "set_headers": {"x-b": "2"}}]}}}
    ]}));
    assert_eq!(
        router.owned_headers(),
        ["x-a", "x-b", "x-internal", "x-meshwasm-lane"]
    );
}

#[test]
fn uses_claims_and_known_lanes() {
    let plain = router(json!({"rules": [{"name": "a", "action": {"lane": "v2"}}]}));
    assert!(!plain.uses_claims());
    assert!(plain.is_known_lane("v2"));
    assert!(!plain.is_known_lane("v9"));
    assert!(router(canary(10.0)).uses_claims());
    let keyed = router(json!({"rules": [{"name": "a", "action": {"rollout":
        {"key": {"claim": "sub"}, "percent": 5}}}]}));
    assert!(keyed.uses_claims());
}

#[test]
fn no_rules_no_lane_no_changes() {
    let router = router(json!({}));
    let decision = get("/").header("baggage", "a=1").decide(&router);
    assert_eq!(decision, Decision::default());
    assert!(mutations(&decision).is_empty());
}
