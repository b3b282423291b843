//! End to end: the staged chains (`wasmplugin-manifests/staged/`, one
//! WasmPlugin per proxy and direction running several filters as stages)
//! behave exactly as the separate plugins they replace. The same traffic goes
//! through the mesh once with each set of manifests; what the client sees and
//! what the filters count must be the same.
//!
//! Run: `MESHWASM_ENVOY=... MESHWASM_DIST=... cargo test -p meshwasm-integration --test staged -- --test-threads 1`

use meshwasm_integration::http::{self, Response};
use meshwasm_integration::jwks_server::{self, JwksServer};
use meshwasm_integration::mesh::repo_root;
use meshwasm_integration::{Mesh, MeshOptions};
use mint_token::demo_bearer as token;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const INGRESS: &str = "istio-ingressgateway";
/// What a client can tell about a response apart from bodies that carry ids.
const SEEN_HEADERS: [&str; 4] = [
    "content-type",
    "www-authenticate",
    "x-meshwasm-breaker",
    "x-meshwasm-rejected-by",
];

fn start(manifests: &str) -> Mesh {
    let options = MeshOptions {
        manifests: repo_root().join(manifests),
        ..MeshOptions::default()
    };
    Mesh::start(options).unwrap_or_else(|err| panic!("mesh ({manifests}) did not start: {err:#}"))
}

/// One response as the comparison sees it.
fn seen(label: &str, response: &Response) -> String {
    let body = response.json().unwrap_or(Value::Null);
    let field = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_owned()
    };
    let headers: Vec<String> = SEEN_HEADERS
        .iter()
        .map(|name| format!("{name}={}", response.header(name).unwrap_or("-")))
        .collect();
    format!(
        "{label}: {} type={} inventory={} {}",
        response.status,
        field("type"),
        field("inventory_version"),
        headers.join(" ")
    )
}

/// The scenario: authorization outcomes at the gateway, the canary split by
/// user, then payment failing until order's breaker opens.
fn drive(mesh: &Mesh) -> Vec<String> {
    let agent = http::agent();
    let ingress = &mesh.ready.ingress;
    // Every request names its user (`x-user`): the gateway's canary splits
    // requests without one at random, which no comparison could pin down.
    let order = |user: &str, auth: Option<&str>| {
        let mut headers = vec![("x-user", user)];
        headers.extend(auth.map(|a| ("authorization", a)));
        http::post_json(
            &agent,
            &format!("{ingress}/orders"),
            &json!({"sku": "sku-1", "quantity": 1, "user": user}),
            &headers,
        )
        .unwrap()
    };
    let alice = token("alice", json!({})).unwrap();
    let expired = token("alice", json!({"exp": 1_000_000_000})).unwrap();
    let admin = token("root", json!({"groups": ["admin"]})).unwrap();
    let beta = token("bea", json!({"beta": true})).unwrap();
    let mut seen_all = vec![
        seen("order, valid token", &order("alice", Some(&alice))),
        seen("order, no token", &order("alice", None)),
        seen("order, expired token", &order("alice", Some(&expired))),
        seen(
            "order, garbage token",
            &order("alice", Some("Bearer a.b.c")),
        ),
        seen("beta user", &order("bea", Some(&beta))),
    ];
    let delete = |auth: &str| {
        http::send(
            &agent,
            "DELETE",
            &format!("{ingress}/orders/1"),
            "",
            &[("authorization", auth), ("x-user", "alice")],
        )
        .unwrap()
    };
    seen_all.push(seen("delete, no admin", &delete(&alice)));
    seen_all.push(seen("delete, admin", &delete(&admin)));
    let healthz = http::get(
        &agent,
        &format!("{ingress}/healthz"),
        &[("x-user", "alice")],
    )
    .unwrap();
    seen_all.push(seen("healthz", &healthz));
    for index in 0..30 {
        let user = format!("user-{index}");
        let auth = token(&user, json!({})).unwrap();
        seen_all.push(seen(&user, &order(&user, Some(&auth))));
    }

    let payment = &mesh.ready.workloads["payment-v1"].app;
    let faults = |rate: f64| {
        http::post_json(
            &agent,
            &format!("{payment}/faults"),
            &json!({"error_rate": rate, "latency_ms": 0}),
            &[],
        )
        .unwrap()
    };
    faults(1.0);
    for index in 0..10 {
        seen_all.push(seen(
            &format!("payment failing, order {index}"),
            &order("alice", Some(&alice)),
        ));
    }
    faults(0.0);
    seen_all
}

/// Every meshwasm counter (and histogram count) of every proxy, once they
/// stop changing (telemetry counts a request when Envoy logs it, just after
/// the client has its response).
fn counters(mesh: &Mesh) -> BTreeMap<String, u64> {
    let read = || {
        let mut all = BTreeMap::new();
        let proxies =
            std::iter::once(INGRESS.to_owned()).chain(mesh.ready.workloads.keys().cloned());
        for proxy in proxies {
            let text = mesh.prometheus(&proxy).unwrap();
            let counters: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("# TYPE "))
                .filter_map(|rest| rest.split_once(' '))
                .filter(|(name, kind)| {
                    name.starts_with("meshwasm_") && matches!(*kind, "counter" | "histogram")
                })
                .map(|(name, _)| name)
                .collect();
            for line in text.lines().filter(|line| !line.starts_with('#')) {
                let Some((series, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let name = series.split('{').next().unwrap_or_default();
                let counted = counters.contains(&name)
                    || name
                        .strip_suffix("_count")
                        .is_some_and(|histogram| counters.contains(&histogram));
                if counted && !name.ends_with("_bucket") && !name.ends_with("_sum") {
                    let value = value.parse::<f64>().unwrap_or(f64::NAN) as u64;
                    all.insert(format!("{proxy} {series}"), value);
                }
            }
        }
        all
    };
    let started = Instant::now();
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = read();
        if now == last || started.elapsed() > Duration::from_secs(20) {
            return now;
        }
        last = now;
    }
}

#[test]
fn staged_chains_answer_and_count_as_the_separate_plugins_do() {
    let mut separate = start("wasmplugin-manifests");
    let separate_seen = drive(&separate);
    let separate_counts = counters(&separate);
    separate.shutdown();

    let mut staged = start("wasmplugin-manifests/staged");
    let staged_seen = drive(&staged);
    let staged_counts = counters(&staged);
    let (ingress_log, order_log) = (staged.log(INGRESS), staged.log("order-v1.sidecar"));
    staged.shutdown();

    assert!(
        ingress_log.contains("stages: configured authz -> routing -> telemetry")
            && order_log.contains("stages: configured routing -> telemetry -> circuit_breaker"),
        "the staged mesh runs the staged chains:\n{ingress_log}\n{order_log}"
    );
    // The scenario reaches every outcome it is meant to compare.
    let joined = separate_seen.join("\n");
    for outcome in [
        ": 201 ",
        ": 401 ",
        ": 403 ",
        "x-meshwasm-breaker=open",
        "inventory=v2",
        "inventory=v1",
    ] {
        assert!(
            joined.contains(outcome),
            "no `{outcome}` in the scenario:\n{joined}"
        );
    }
    for (separate, staged) in separate_seen.iter().zip(&staged_seen) {
        assert_eq!(separate, staged, "separate plugins vs staged chain");
    }
    assert_eq!(separate_seen.len(), staged_seen.len());
    assert!(
        separate_counts
            .keys()
            .any(|series| series.contains("meshwasm_breaker_rejections_total")),
        "breaker rejections are counted: {separate_counts:#?}"
    );
    let differing: Vec<String> = separate_counts
        .keys()
        .chain(staged_counts.keys())
        .filter(|series| separate_counts.get(*series) != staged_counts.get(*series))
        .map(|series| {
            format!(
                "{series}: separate {:?}, staged {:?}",
                separate_counts.get(series),
                staged_counts.get(series)
            )
        })
        .collect();
    assert!(
        differing.is_empty(),
        "counters differ:\n{}",
        differing.join("\n")
    );
}

/// The shipped gateway chain with its authz stage fetching the demo keys from
/// `server` instead of holding them inline.
fn ingress_chain_fetching_keys() -> String {
    let text = std::fs::read_to_string(
        repo_root().join("wasmplugin-manifests/staged/wasmplugin-stages.yaml"),
    )
    .unwrap();
    let document = text
        .split("\n---")
        .find(|doc| doc.contains("  name: ingress-stages\n"))
        .expect("the staged gateway chain");
    let mut plugin: serde_yaml::Value = serde_yaml::from_str(document).unwrap();
    let authz = &mut plugin["spec"]["pluginConfig"]["stages"][0];
    assert_eq!(authz["filter"].as_str(), Some("authz"));
    let provider = authz["config"]["providers"][0].as_mapping_mut().unwrap();
    provider
        .remove("jwks")
        .expect("an inline key set to replace");
    for (key, value) in [
        ("jwks_uri", jwks_server::URI),
        ("jwks_cluster", jwks_server::CLUSTER),
        ("jwks_refetch_interval", "1s"),
        ("jwks_cache_duration", "10m"),
    ] {
        provider.insert(key.into(), value.into());
    }
    serde_yaml::to_string(&plugin).unwrap()
}

/// authz pausing a request for a JWKS fetch (a token whose `kid` the stored
/// set lacks) inside a chain: when the fetch answers, the request goes on
/// through the later stages (routing decides its lane, telemetry counts it)
/// before Envoy's chain resumes.
#[test]
fn a_stage_waiting_for_a_jwks_fetch_resumes_into_the_next_stages() {
    let other_keys = include_str!("../../filters/authz/testdata/other-jwks.json");
    let server = JwksServer::start(other_keys);
    let options = MeshOptions {
        manifests: repo_root().join("wasmplugin-manifests/staged"),
        extra_manifests: vec![server.service_entry(), ingress_chain_fetching_keys()],
        // One worker: the request below meets the worker that fetched before.
        concurrency: 1,
        ..MeshOptions::default()
    };
    let mesh = Mesh::start(options).unwrap_or_else(|err| panic!("mesh did not start: {err:#}"));
    let agent = http::agent();
    let alice = token("alice", json!({})).unwrap();
    let order = || {
        http::post_json(
            &agent,
            &format!("{}/orders", mesh.ready.ingress),
            &json!({"sku": "sku-1", "quantity": 1, "user": "alice"}),
            &[("authorization", &alice), ("x-user", "alice")],
        )
        .unwrap()
    };
    // The worker holds the other key set: the demo key's `kid` is unknown.
    let started = Instant::now();
    while order().status != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no 401 for an unknown kid"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.serve(200, include_str!("../demo-keys/demo-jwks.json"));
    // Unknown-kid refetches are limited to one per `jwks_refetch_interval`
    // (1 s): the next request must be allowed to fetch, and nothing else
    // fetches meanwhile (the periodic refresh is 10 min away), so a 201 is
    // this request's own fetch, waited for inside the chain.
    std::thread::sleep(Duration::from_millis(1500));
    let response = order();
    assert_eq!(
        response.status,
        201,
        "{}\n{}",
        response.body,
        mesh.dump_logs()
    );
    // Authz's 401s reached neither routing nor telemetry: the one routing
    // decision and the one request telemetry counted are this request's.
    for (metric, stage) in [
        ("meshwasm_routing_decisions_total", "routing"),
        ("meshwasm_requests_total", "telemetry"),
    ] {
        let counted: u64 = mesh.stats_matching(INGRESS, metric).unwrap().values().sum();
        assert_eq!(counted, 1, "{stage}'s stage ran after the fetch ({metric})");
    }
}
