//! End to end: the circuit-breaker filter on order's sidecar (outbound, CLIENT
//! mode) guarding order's calls to payment, driven with payment's fault knob
//! (`POST /faults` on payment's app). "Payment's own counter" is payment's
//! `app_requests_total{route="/charge"}`: calls the breaker rejected never
//! reach it.
//!
//! Run: `MESHWASM_ENVOY=... MESHWASM_DIST=... cargo test -p meshwasm-integration --test circuit_breaker -- --test-threads 1`

use meshwasm_integration::http::{self, Response};
use meshwasm_integration::{Mesh, MeshOptions};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

const ORDER: &str = "order-v1";
const PAYMENT: &str = "payment-v1";

/// The shipped WasmPlugin with a test `pluginConfig` (same name, so it
/// replaces the one in `wasmplugin-manifests/`).
fn plugin(policy: &str) -> String {
    format!(
        r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: circuit-breaker
  namespace: order-app
spec:
  selector:
    matchLabels:
      app: order
  match:
    - mode: CLIENT
  url: oci://ghcr.io/meshwasm/meshwasm:0.1.0
  pluginName: circuit_breaker
  failStrategy: FAIL_OPEN
  pluginConfig:
    default_policy: null
    policies:
      - name: payment
        match:
          hosts: ["payment*"]
          paths: ["/charge"]
        key:
          - source: cluster
{policy}
"#
    )
}

/// payment's DestinationRule without its outlier detection, which would
/// otherwise eject payment after 3 errors and hide what the breaker does.
const PAYMENT_WITHOUT_OUTLIER_DETECTION: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: payment
  namespace: order-app
spec:
  host: payment
  subsets:
    - name: v1
      labels:
        version: v1
"#;

fn start(policy: &str, concurrency: u32) -> Mesh {
    let options = MeshOptions {
        extra_manifests: vec![plugin(policy), PAYMENT_WITHOUT_OUTLIER_DETECTION.to_owned()],
        concurrency,
        ..MeshOptions::default()
    };
    Mesh::start(options).unwrap_or_else(|err| panic!("mesh did not start: {err:#}"))
}

fn bearer() -> String {
    mint_token::demo_bearer("alice", serde_json::json!({})).unwrap()
}

fn place_order(mesh: &Mesh) -> Response {
    http::post_json(
        &http::agent(),
        &format!("{}/orders", mesh.ready.ingress),
        &json!({"sku": "sku-1", "quantity": 1, "user": "alice"}),
        &[("authorization", &bearer())],
    )
    .unwrap()
}

fn payment_app(mesh: &Mesh) -> &str {
    &mesh.ready.workloads[PAYMENT].app
}

fn set_faults(mesh: &Mesh, faults: Value) {
    let response = http::post_json(
        &http::agent(),
        &format!("{}/faults", payment_app(mesh)),
        &faults,
        &[],
    )
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
}

/// `/charge` requests payment's app has handled, whatever their status.
fn charges_at_payment(mesh: &Mesh) -> u64 {
    let metrics = http::get(
        &http::agent(),
        &format!("{}/metrics", payment_app(mesh)),
        &[],
    )
    .unwrap();
    metrics
        .body
        .lines()
        .filter(|line| {
            line.starts_with("app_requests_total{") && line.contains("route=\"/charge\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A breaker metric on order's sidecar, with its Istio-convention tags.
fn breaker_stat(mesh: &Mesh, tags: &str, name: &str) -> u64 {
    mesh.stat(ORDER, &format!("wasmcustom.{tags}{name}"))
        .unwrap()
}

/// The problem `type` order passed on from the breaker's rejection.
fn problem_type(response: &Response) -> String {
    let body = response.json().unwrap();
    body["upstream_body"]["type"]
        .as_str()
        .unwrap_or_else(|| panic!("no problem body in {body}"))
        .to_owned()
}

fn retry_after(response: &Response) -> u64 {
    response
        .header("retry-after")
        .unwrap_or_else(|| panic!("no retry-after: {} {:?}", response.status, response.headers))
        .parse()
        .unwrap()
}

fn assert_fast_rejection(response: &Response) {
    assert_eq!(response.status, 503, "{}", response.body);
    assert_eq!(response.header("x-meshwasm-breaker"), Some("open"));
    assert_eq!(problem_type(response), "urn:meshwasm:problem:circuit-open");
}

/// Sleeps until the breaker lets its next probe through.
fn wait_for_probe(seconds: u64) {
    thread::sleep(Duration::from_millis(seconds * 1000 + 200));
}

/// Orders placed until the first one is answered by the open breaker.
/// Istio's default retry policy on the gateway → order hop retries a 503 twice,
/// so one order may make up to three calls to payment: the threshold is
/// checked at payment, where each call counts once.
fn order_until_rejected(mesh: &Mesh) -> Response {
    for _ in 0..20 {
        let response = place_order(mesh);
        assert_eq!(response.status, 503, "{}", response.body);
        if response.header("x-meshwasm-breaker").is_some() {
            return response;
        }
    }
    panic!("the breaker never opened");
}

#[test]
fn failing_payment_opens_the_breaker_then_probes_and_recovers() {
    let mesh = start(
        r#"
        trip:
          consecutive_failures: 3
          failure_rate_percent: null
        open:
          duration: 2s
          backoff_multiplier: 2
          max_duration: 30s
        half_open:
          permitted_calls: 1
"#,
        2,
    );
    assert_eq!(place_order(&mesh).status, 201);
    set_faults(&mesh, json!({"error_rate": 1.0}));

    // Three failing calls reach payment, then the breaker opens.
    let before = charges_at_payment(&mesh);
    let rejected = order_until_rejected(&mesh);
    assert_fast_rejection(&rejected);
    assert_eq!(charges_at_payment(&mesh), before + 3);

    // Further orders fail fast and payment's counter does not grow.
    let mut waits = vec![retry_after(&rejected)];
    for _ in 0..5 {
        let response = place_order(&mesh);
        assert_fast_rejection(&response);
        waits.push(retry_after(&response));
    }
    assert_eq!(charges_at_payment(&mesh), before + 3);
    assert!(waits.iter().all(|wait| (1..=2).contains(wait)), "{waits:?}");

    // After the open time one probe goes through; payment still fails, so the
    // breaker re-opens for twice as long (the gateway's retries of that order
    // already meet the re-opened breaker).
    wait_for_probe(2);
    let reopened = place_order(&mesh);
    assert_eq!(charges_at_payment(&mesh), before + 4, "exactly one probe");
    assert_fast_rejection(&reopened);
    let backoff = retry_after(&reopened);
    assert!(
        (3..=4).contains(&backoff),
        "re-open lasts {backoff}s, expected 4s"
    );

    // Payment heals: the next probe succeeds and the breaker closes.
    set_faults(&mesh, json!({"error_rate": 0.0}));
    wait_for_probe(backoff);
    for _ in 0..3 {
        assert_eq!(place_order(&mesh).status, 201);
    }
    assert_eq!(charges_at_payment(&mesh), before + 7);

    let policy = "policy=.=payment;.;";
    assert_eq!(
        breaker_stat(&mesh, policy, "meshwasm_breaker_trips_total"),
        2
    );
    assert_eq!(
        breaker_stat(&mesh, policy, "meshwasm_breaker_half_open_probes_total"),
        2
    );
    let rejections = breaker_stat(
        &mesh,
        &format!("{policy}reason=.=open;.;"),
        "meshwasm_breaker_rejections_total",
    );
    assert!(rejections >= 7, "{rejections} rejections counted");
}

#[test]
fn slow_payment_trips_the_slow_call_rule() {
    let mesh = start(
        r#"
        trip:
          consecutive_failures: null
          failure_rate_percent: null
          slow_call_rate_percent: 50
          slow_call_duration: 300ms
          minimum_calls: 3
          window:
            kind: count
            size: 5
        open:
          duration: 30s
"#,
        2,
    );
    assert_eq!(place_order(&mesh).status, 201);
    set_faults(&mesh, json!({"latency_ms": 800}));
    let before = charges_at_payment(&mesh);
    // Fast call 1, then slow calls: 2 of 3 slow ≥ 50 % trips on the third.
    for _ in 0..2 {
        assert_eq!(place_order(&mesh).status, 201, "slow calls still succeed");
    }
    let rejected = place_order(&mesh);
    assert_fast_rejection(&rejected);
    assert_eq!(charges_at_payment(&mesh), before + 2);
}

/// The address of order's outbound listener (what its app uses as HTTP proxy).
fn order_outbound(mesh: &Mesh) -> String {
    let admin = mesh.admin_url(ORDER).unwrap();
    let listeners = http::get(&http::agent(), &format!("{admin}/listeners"), &[]).unwrap();
    listeners
        .body
        .lines()
        .find_map(|line| line.strip_prefix("0.0.0.0_8080::"))
        .unwrap_or_else(|| panic!("no outbound listener in {}", listeners.body))
        .trim()
        .to_owned()
}

/// One `/charge` through order's sidecar on a new connection (so Envoy
/// spreads calls over its workers); returns the status.
fn charge_on_new_connection(outbound: &str) -> u16 {
    let body = r#"{"order_id":"e2e","user":"alice","amount":1}"#;
    let mut stream = TcpStream::connect(outbound).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "POST /charge HTTP/1.1\r\nhost: payment:8080\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Envoy may reset the connection right after a local reply sent before it
    // read the request body: keep what arrived before the reset.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(read @ 1..) = stream.read(&mut chunk) {
        answer.extend_from_slice(&chunk[..read]);
    }
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// Connections each worker of the outbound listener accepted.
fn connections_per_worker(mesh: &Mesh, outbound: &str, workers: u32) -> Vec<u64> {
    let listener = outbound.replace(':', "_");
    (0..workers)
        .map(|worker| {
            mesh.stat(
                ORDER,
                &format!("listener.{listener}.worker_{worker}.downstream_cx_total"),
            )
            .unwrap()
        })
        .collect()
}

/// Failing calls that reach payment before the breaker rejects the first one.
fn failures_until_open(concurrency: u32) -> u64 {
    let mesh = start(
        r#"
        trip:
          consecutive_failures: 8
          failure_rate_percent: null
        open:
          duration: 60s
"#,
        concurrency,
    );
    set_faults(&mesh, json!({"error_rate": 1.0}));
    let outbound = order_outbound(&mesh);
    let workers_before = connections_per_worker(&mesh, &outbound, concurrency);
    let before = charges_at_payment(&mesh);
    let mut sent = 0;
    loop {
        let status = charge_on_new_connection(&outbound);
        assert_eq!(status, 503);
        sent += 1;
        if charges_at_payment(&mesh) == before + sent - 1 {
            break; // rejected by the breaker, not by payment
        }
        assert!(sent < 40, "the breaker never opened");
    }
    // With 2 workers both must have carried failing calls, or the test would
    // not show that they share one breaker.
    let workers_after = connections_per_worker(&mesh, &outbound, concurrency);
    for (worker, (after, before)) in workers_after.iter().zip(&workers_before).enumerate() {
        assert!(
            after > before,
            "worker {worker} took no calls: {workers_after:?}"
        );
    }
    charges_at_payment(&mesh) - before
}

#[test]
fn two_workers_trip_after_the_same_number_of_failures_as_one() {
    assert_eq!(failures_until_open(1), 8);
    assert_eq!(failures_until_open(2), 8);
}

#[test]
fn bulkhead_admits_at_most_its_limit_under_concurrent_load() {
    let mesh = start(
        r#"
        trip:
          consecutive_failures: 100
          failure_rate_percent: null
        bulkhead:
          max_concurrent: 2
"#,
        2,
    );
    assert_eq!(place_order(&mesh).status, 201);
    set_faults(&mesh, json!({"latency_ms": 1500}));
    let before = charges_at_payment(&mesh);
    let responses: Vec<Response> = thread::scope(|scope| {
        let orders: Vec<_> = (0..6).map(|_| scope.spawn(|| place_order(&mesh))).collect();
        orders
            .into_iter()
            .map(|order| order.join().unwrap())
            .collect()
    });
    let admitted = responses.iter().filter(|r| r.status == 201).count();
    let rejected: Vec<&Response> = responses.iter().filter(|r| r.status == 503).collect();
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(admitted + rejected.len(), 6, "{statuses:?}");
    assert!(
        admitted <= 2,
        "{admitted} calls admitted past a bulkhead of 2"
    );
    assert!(admitted >= 1);
    for response in &rejected {
        assert_eq!(response.header("x-meshwasm-breaker"), Some("bulkhead_full"));
        assert_eq!(problem_type(response), "urn:meshwasm:problem:bulkhead-full");
    }
    assert_eq!(charges_at_payment(&mesh), before + admitted as u64);
    // The gateway retries each rejected order (Istio's default retry on 503),
    // so the filter counts at least one rejection per rejected order.
    let counted = breaker_stat(
        &mesh,
        "policy=.=payment;.;",
        "meshwasm_breaker_bulkhead_rejections_total",
    );
    assert!(
        counted >= rejected.len() as u64,
        "{counted} bulkhead rejections counted"
    );
}
