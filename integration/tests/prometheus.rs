//! End to end: a real Prometheus (Debian's) scrapes every Envoy of the local
//! mesh with the labels of a Kubernetes pod scrape and evaluates the rules of
//! `61-prometheus-rules.yaml`. After a known mix of traffic, every PromQL
//! expression of every panel of `60-dashboards.yaml` runs through the HTTP API
//! and must return the expected series and values; an empty panel, or a panel
//! this test has no expectation for, fails.
//!
//! Prometheus's `rate` ignores what a counter held at its first scrape, so a
//! warm-up creates every series first; the panels are then evaluated over a
//! window that starts after the warm-up was scraped and holds only the mix.
//!
//! Run: `MESHWASM_ENVOY=... MESHWASM_DIST=... cargo test -p meshwasm-integration --test prometheus -- --test-threads 1`

use meshwasm_integration::http::{self, Response};
use meshwasm_integration::prometheus_server::{Prometheus, Series, BINARY_ENV};
use meshwasm_integration::skip::skip;
use meshwasm_integration::{mesh::repo_root, Mesh, MeshOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

/// The mix after the warm-up.
const SUCCESSES: usize = 20;
const SLOW: usize = 6;
/// Payment's injected latency for the slow orders (under the breaker's 1 s slow-call limit).
const SLOW_MS: u64 = 300;
const HEALTHZ: usize = 10;
const NEW_TENANTS: usize = 5;
const NO_TOKEN: usize = 4;
const BAD_TOKEN: usize = 2;
const FORBIDDEN: usize = 3;
/// Orders the client sees rejected by the open breaker.
const REJECTED: usize = 5;
/// `consecutive_failures` in wasmplugin-circuit-breaker.yaml: the charges
/// that fail before the breaker opens.
const CONSECUTIVE_FAILURES: usize = 5;
/// Istio's default retry policy (the ingress VirtualService sets no
/// `retries`): the gateway tries an order answered 503 three times.
const ATTEMPTS: usize = 3;
/// Tenants of the warm-up: past `max_label_values` (50), so values fold.
const FLOOD_TENANTS: usize = 55;

struct Panel {
    id: u64,
    title: String,
    exprs: Vec<(String, String)>,
}

/// Every non-row panel's (refId, expr) of the shipped dashboard.
fn dashboard_panels() -> Vec<Panel> {
    let path = repo_root().join("wasmplugin-manifests/60-dashboards.yaml");
    let document: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dashboard: Value =
        serde_json::from_str(document["data"]["meshwasm-red.json"].as_str().unwrap()).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|panel| panel["type"] != "row")
        .map(|panel| Panel {
            id: panel["id"].as_u64().unwrap(),
            title: panel["title"].as_str().unwrap().to_owned(),
            exprs: panel["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    let text = |key: &str| t[key].as_str().unwrap().to_owned();
                    (text("refId"), text("expr"))
                })
                .collect(),
        })
        .collect()
}

fn prometheus_missing() -> bool {
    std::env::var_os(BINARY_ENV).is_none()
        && !std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .any(|dir| dir.join("prometheus").is_file())
}

struct Client<'a> {
    mesh: &'a Mesh,
    agent: ureq::Agent,
    token: String,
}

impl Client<'_> {
    fn order(&self, auth: Option<&str>, tenant: &str) -> Response {
        let mut headers = vec![("x-tenant-id", tenant), ("x-user", "alice")];
        if let Some(auth) = auth {
            headers.push(("authorization", auth));
        }
        http::post_json(
            &self.agent,
            &format!("{}/orders", self.mesh.ready.ingress),
            &json!({"sku": "sku-1", "quantity": 1, "user": "alice"}),
            &headers,
        )
        .unwrap()
    }

    fn placed(&self) -> Response {
        let response = self.order(Some(&self.token), "acme");
        assert_eq!(response.status, 201, "order failed: {}", response.body);
        response
    }

    fn healthz(&self, tenant: Option<&str>) {
        let headers: Vec<(&str, &str)> = tenant.map(|t| ("x-tenant-id", t)).into_iter().collect();
        let url = format!("{}/healthz", self.mesh.ready.ingress);
        assert_eq!(http::get(&self.agent, &url, &headers).unwrap().status, 200);
    }

    fn denied(&self) {
        assert_eq!(self.order(None, "acme").status, 401);
        assert_eq!(self.order(Some("Bearer not.a.jwt"), "acme").status, 401);
        let url = format!("{}/orders/1", self.mesh.ready.ingress);
        let auth = [("authorization", self.token.as_str())];
        let response = http::send(&self.agent, "DELETE", &url, "", &auth).unwrap();
        assert_eq!(response.status, 403);
    }

    fn faults(&self, error_rate: f64, latency_ms: u64) {
        let payment = &self.mesh.ready.workloads["payment-v1"].app;
        let body = json!({"error_rate": error_rate, "latency_ms": latency_ms});
        let response =
            http::post_json(&self.agent, &format!("{payment}/faults"), &body, &[]).unwrap();
        assert_eq!(response.status, 200, "{}", response.body);
    }
}

fn breaker_open(response: &Response) -> bool {
    response.status == 503 && response.header("x-meshwasm-breaker") == Some("open")
}

/// Unix seconds.
fn unix(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Warm-up: every series the mix touches, including a breaker trip and its
/// recovery, and the tenant flood that makes values fold.
fn warm_up(client: &Client, prometheus: &Prometheus) {
    client.placed();
    client.healthz(None);
    for index in 0..FLOOD_TENANTS {
        client.healthz(Some(&format!("flood-{index}")));
    }
    client.denied();
    client.faults(1.0, 0);
    let started = Instant::now();
    while !breaker_open(&client.order(Some(&client.token), "acme")) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "breaker never opened"
        );
    }
    client.faults(0.0, 0);
    // Open for 10 s, then half-open probes close it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        client.order(Some(&client.token), "acme");
        prometheus
            .wait_for_scrapes_after(SystemTime::now(), Duration::from_secs(30))
            .unwrap();
        // Refreshed every 5 s by the filter: absent until its first tick.
        let states = prometheus.query("meshwasm_breaker_state").unwrap();
        if !states.is_empty() && states.iter().all(|state| state.value == 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "breaker did not close again");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The mix whose rates the panels must show; returns the orders the client
/// saw fail before the breaker opened.
fn mix(client: &Client) -> usize {
    for _ in 0..SUCCESSES {
        client.placed();
    }
    client.faults(0.0, SLOW_MS);
    for _ in 0..SLOW {
        client.placed();
    }
    client.faults(0.0, 0);
    for _ in 0..HEALTHZ {
        client.healthz(None);
    }
    for index in 0..NEW_TENANTS {
        client.healthz(Some(&format!("late-{index}")));
    }
    for _ in 0..NO_TOKEN {
        assert_eq!(client.order(None, "acme").status, 401);
    }
    for _ in 0..BAD_TOKEN {
        assert_eq!(client.order(Some("Bearer not.a.jwt"), "acme").status, 401);
    }
    let url = format!("{}/orders/1", client.mesh.ready.ingress);
    for _ in 0..FORBIDDEN {
        let auth = [("authorization", client.token.as_str())];
        let response = http::send(&client.agent, "DELETE", &url, "", &auth).unwrap();
        assert_eq!(response.status, 403);
    }
    client.faults(1.0, 0);
    let (mut failures, mut rejected) = (0, 0);
    while rejected < REJECTED {
        let response = client.order(Some(&client.token), "acme");
        assert_eq!(response.status, 503, "{}", response.body);
        if breaker_open(&response) {
            rejected += 1;
        } else {
            assert_eq!(rejected, 0, "a failure after the breaker opened");
            failures += 1;
        }
        assert!(
            failures <= 5,
            "5 failures in a row and the breaker is still closed"
        );
    }
    client.faults(0.0, 0);
    failures
}

/// `label value -> value` of a result keyed by one label, without NaN (a
/// ratio or quantile of series that had no traffic in the window).
fn by(result: &[Series], label: &str) -> BTreeMap<String, f64> {
    result
        .iter()
        .filter(|series| !series.value.is_nan())
        .map(|series| (series.label(label).to_owned(), series.value))
        .collect()
}

/// The checks of one panel target, given its result.
struct Expect<'a> {
    panel: &'a str,
    target: &'a str,
    result: &'a [Series],
    window: f64,
}

impl Expect<'_> {
    fn fail(&self, what: &str) -> ! {
        panic!(
            "panel `{}` target {}: {what}; result: {:?}",
            self.panel, self.target, self.result
        )
    }

    /// Exactly these label values (of `label`).
    fn keys(&self, label: &str, want: &[&str]) -> BTreeMap<String, f64> {
        self.keys_of(by(self.result, label), label, want)
    }

    fn keys_of(
        &self,
        got: BTreeMap<String, f64>,
        label: &str,
        want: &[&str],
    ) -> BTreeMap<String, f64> {
        let keys: Vec<&str> = got.keys().map(String::as_str).collect();
        if keys != want {
            self.fail(&format!("`{label}` values {keys:?}, want {want:?}"));
        }
        got
    }

    /// A rate over the window that stands for `count` events (Prometheus
    /// extrapolates to the window's edges: a few percent over).
    fn rate(&self, key: &str, got: f64, count: usize) {
        let events = got * self.window;
        let count = count as f64;
        if (events - count).abs() > 0.1 * count + 0.5 {
            self.fail(&format!(
                "{key}: {got}/s over {}s is {events:.2} events, want {count}",
                self.window
            ));
        }
    }

    fn near(&self, key: &str, got: f64, want: f64, tolerance: f64) {
        if (got - want).abs() > tolerance {
            self.fail(&format!("{key}: {got}, want {want} ± {tolerance}"));
        }
    }

    fn within(&self, key: &str, got: f64, low: f64, high: f64) {
        if !(low..=high).contains(&got) {
            self.fail(&format!("{key}: {got}, want {low} ..= {high}"));
        }
    }

    /// The series with traffic in the window (others read 0) and their rates.
    fn rates(&self, label: &str, want: &[(&str, usize)]) {
        let keys: Vec<&str> = want.iter().map(|(key, _)| *key).collect();
        let mut active = by(self.result, label);
        active.retain(|_, rate| *rate != 0.0);
        let got = self.keys_of(active, label, &keys);
        for (key, count) in want {
            self.rate(key, got[*key], *count);
        }
    }

    fn ratios(&self, label: &str, want: &[(&str, f64)]) {
        let keys: Vec<&str> = want.iter().map(|(key, _)| *key).collect();
        let got = self.keys(label, &keys);
        for (key, ratio) in want {
            self.near(key, got[*key], *ratio, 0.02);
        }
    }
}

#[test]
fn every_dashboard_panel_and_rule_shows_the_traffic_sent() {
    if prometheus_missing() {
        skip(
            "prometheus::every_dashboard_panel_and_rule_shows_the_traffic_sent",
            "Prometheus",
            "install Debian's prometheus package (`make prometheus`) or set MESHWASM_PROMETHEUS",
        );
        return;
    }
    let mesh = Mesh::start(MeshOptions {
        prometheus: true,
        ..MeshOptions::default()
    })
    .unwrap();
    let prometheus = mesh.prometheus_api().unwrap();
    let client = Client {
        mesh: &mesh,
        agent: http::agent(),
        token: mint_token::demo_bearer("alice", json!({})).unwrap(),
    };

    warm_up(&client, &prometheus);
    prometheus.wait_caught_up(Duration::from_secs(60)).unwrap();
    let start = SystemTime::now();
    prometheus
        .wait_for_scrapes_after(start, Duration::from_secs(30))
        .unwrap();
    let failures = mix(&client);
    prometheus.wait_caught_up(Duration::from_secs(60)).unwrap();
    // Panels are evaluated over [start, start + window]: at least 30 s, so
    // `rate`'s extrapolation to the window's edges (a scrape interval at
    // most on each side) stays under 7 %.
    let window = (unix(SystemTime::now()) - unix(start)).ceil().max(30.0);
    let now = start + Duration::from_secs_f64(window);
    prometheus
        .wait_for_scrapes_after(now, Duration::from_secs(60))
        .unwrap();

    // Every rule of 61-prometheus-rules.yaml loaded and evaluating cleanly.
    let groups = prometheus.get("rules", &[]).unwrap()["groups"].clone();
    let rules: Vec<&Value> = groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 15, "{groups}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let burning = prometheus
        .query(r#"ALERTS{alertname="MeshwasmErrorBudgetFastBurn"}"#)
        .unwrap();
    assert_eq!(
        by(&burning, "destination_workload")
            .keys()
            .collect::<Vec<_>>(),
        ["order-v1", "payment-v1"],
        "{burning:?}"
    );

    // What each inbound (server-side) hop saw of the mix.
    let failed_orders = ATTEMPTS * (failures + REJECTED);
    let orders = SUCCESSES + SLOW + failed_orders;
    let charges = SUCCESSES + SLOW + CONSECUTIVE_FAILURES;
    let healthz = HEALTHZ + NEW_TENANTS;
    let order_errors = failed_orders;
    let routes = ["/charge", "/healthz", "/orders", "/reserve"];
    let unknown_tenant = orders + charges + HEALTHZ;

    let panels = dashboard_panels();
    assert!(!panels.is_empty());
    for panel in &panels {
        for (target, expr) in &panel.exprs {
            let expr = expr
                .replace("$reporter", "inbound")
                .replace("$workload", ".*")
                .replace("$__rate_interval", &format!("{window}s"));
            let result = prometheus.query_at(&expr, unix(now)).unwrap();
            let expect = Expect {
                panel: &panel.title,
                target,
                result: &result,
                window,
            };
            if result.iter().all(|series| series.value.is_nan()) {
                expect.fail(&format!("empty (`{expr}`)"));
            }
            match (panel.id, target.as_str()) {
                (2, "A") => expect.rates(
                    "route",
                    &[
                        ("/charge", charges),
                        ("/healthz", healthz),
                        ("/orders", orders),
                        ("/reserve", orders),
                    ],
                ),
                (3, "A") => expect.ratios(
                    "route",
                    &[
                        ("/charge", CONSECUTIVE_FAILURES as f64 / charges as f64),
                        ("/healthz", 0.0),
                        ("/orders", order_errors as f64 / orders as f64),
                        ("/reserve", 0.0),
                    ],
                ),
                // p50: the fast majority; p95 and p99 of the routes with slow
                // calls (the slow charges and the orders waiting on them) in their bucket.
                (4, quantile) => {
                    for (route, value) in expect.keys("route", &routes) {
                        let slow = quantile != "A" && (route == "/charge" || route == "/orders");
                        if slow {
                            expect.within(&route, value, SLOW_MS as f64 * 0.8, 1000.0);
                        } else if quantile == "A" {
                            expect.within(&route, value, 0.0, 250.0);
                        }
                    }
                }
                (5, "A") => expect.rates(
                    "response_code_class",
                    &[
                        (
                            "2xx",
                            orders - order_errors + orders + charges - CONSECUTIVE_FAILURES
                                + healthz,
                        ),
                        ("5xx", order_errors + CONSECUTIVE_FAILURES),
                    ],
                ),
                (7, "A") => expect.rates(
                    "tenant",
                    &[
                        ("acme", orders),
                        ("other", NEW_TENANTS),
                        ("unknown", unknown_tenant),
                    ],
                ),
                (8, "A") => expect.ratios(
                    "tenant",
                    &[
                        ("acme", order_errors as f64 / orders as f64),
                        ("other", 0.0),
                        (
                            "unknown",
                            CONSECUTIVE_FAILURES as f64 / unknown_tenant as f64,
                        ),
                    ],
                ),
                (9, "A") => {
                    let got = expect.keys("tenant", &["acme", "other", "unknown"]);
                    expect.within("acme", got["acme"], SLOW_MS as f64 * 0.8, 1000.0);
                    expect.within("unknown", got["unknown"], SLOW_MS as f64 * 0.8, 1000.0);
                    expect.within("other", got["other"], 0.0, 250.0);
                }
                (10, "A") => {
                    for (route, bytes) in expect.keys("route", &routes) {
                        expect.within(&route, bytes, 1.0, 10_000.0);
                    }
                }
                // Burn rates over the mesh's whole life: order and payment
                // failed far over 14.4x the budget, inventory never.
                (12, _) => {
                    let got = expect.keys(
                        "destination_workload",
                        &["inventory-v1", "order-v1", "payment-v1"],
                    );
                    expect.near("inventory-v1", got["inventory-v1"], 0.0, 0.0);
                    expect.within("order-v1", got["order-v1"], 14.4, 1000.0);
                    expect.within("payment-v1", got["payment-v1"], 14.4, 1000.0);
                }
                (13, "A") => {
                    for (route, in_flight) in expect.keys("route", &routes) {
                        expect.near(&route, in_flight, 0.0, 0.0);
                    }
                }
                // The late tenants fold at the ingress and at order's sidecar.
                (13, "B") => {
                    let got = expect.keys("label", &["tenant"]);
                    expect.near("tenant", got["tenant"], 2.0 * NEW_TENANTS as f64, 2.0);
                }
                (15, "A") => expect.rates(
                    "reason",
                    &[
                        ("access-denied", FORBIDDEN),
                        ("token-malformed", BAD_TOKEN),
                        ("token-missing", NO_TOKEN),
                    ],
                ),
                (16, "A") => {
                    let got = expect.keys("pod", &["order-v1"]);
                    // Open, or half-open once its 10 s are over (it reads 2 then).
                    expect.within("order-v1", got["order-v1"], 1.0, 2.0);
                    if expect.result[0].label("policy") != "payment" {
                        expect.fail("policy is not `payment`");
                    }
                }
                (17, "A") => {
                    expect.keys("reason", &["open"]);
                    expect.rate(
                        "open",
                        expect.result[0].value,
                        failed_orders - CONSECUTIVE_FAILURES,
                    );
                }
                // max_label_values (50) tenants, plus `other` and `unknown`.
                (18, "A") => {
                    let got = expect.keys("pod", &["inventory-v1", "order-v1", "payment-v1"]);
                    expect.near("order-v1", got["order-v1"], 52.0, 0.0);
                    expect.near("payment-v1", got["payment-v1"], 1.0, 0.0);
                }
                (18, "B") => {
                    let got = expect.keys("pod", &["inventory-v1", "order-v1", "payment-v1"]);
                    expect.near("order-v1", got["order-v1"], 2.0, 0.0);
                    expect.near("inventory-v1", got["inventory-v1"], 1.0, 0.0);
                    expect.near("payment-v1", got["payment-v1"], 1.0, 0.0);
                }
                _ => expect.fail("no expectation in this test: add one"),
            }
        }
    }
}
