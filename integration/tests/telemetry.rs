//! End to end: the telemetry filter (`wasmplugin-manifests/wasmplugin-telemetry.yaml`)
//! on the ingress gateway and every order-app sidecar. What is checked is what
//! an operator sees: `/stats/prometheus` of each proxy, the `x-trace-id`
//! response header, and the processes' logs.
//!
//! Run: `MESHWASM_ENVOY=... MESHWASM_DIST=... cargo test -p meshwasm-integration --test telemetry -- --test-threads 1`

use meshwasm_integration::http::{self, Response};
use meshwasm_integration::prometheus::{samples, total};
use meshwasm_integration::{Mesh, MeshOptions};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const INGRESS: &str = "istio-ingressgateway";
/// `max_label_values` in wasmplugin-telemetry.yaml.
const K: usize = 50;

/// Envoy flushes histograms every 5 s: waits until the proxy's
/// `/stats/prometheus` satisfies `ready`, then returns it.
fn prometheus_when(mesh: &Mesh, proxy: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = mesh.prometheus(proxy).unwrap();
        if ready(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A valid demo token: the shipped authz plugin requires one for `/orders`.
fn bearer() -> String {
    mint_token::demo_bearer("e2e", serde_json::json!({})).unwrap()
}

fn place_order(agent: &ureq::Agent, mesh: &Mesh, headers: &[(&str, &str)]) -> Response {
    let url = format!("{}/orders", mesh.ready.ingress);
    let body = json!({"sku": "sku-1", "quantity": 1, "user": "e2e"});
    let auth = bearer();
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    let response = http::post_json(agent, &url, &body, &all).unwrap();
    assert_eq!(response.status, 201, "order failed: {}", response.body);
    response
}

fn workload_starting_with(mesh: &Mesh, prefix: &str) -> String {
    mesh.ready
        .workloads
        .keys()
        .find(|name| name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} workload in {:?}", mesh.ready.workloads.keys()))
        .clone()
}

/// The JSON access-log lines the telemetry filter wrote into `log`.
fn access_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|line| line.contains("\"type\":\"meshwasm_access\""))
        .filter_map(|line| serde_json::from_str(&line[line.find('{')?..]).ok())
        .collect()
}

#[test]
fn every_hop_counts_every_order_with_route_labels_and_histograms() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let agent = http::agent();
    let order = workload_starting_with(&mesh, "order");
    let payment = workload_starting_with(&mesh, "payment");

    const ORDERS: usize = 12;
    for _ in 0..ORDERS {
        place_order(&agent, &mesh, &[("x-tenant-id", "acme")]);
    }
    let n = ORDERS as f64;
    let placed = [
        ("route", "/orders"),
        ("method", "POST"),
        ("response_code", "201"),
        ("response_code_class", "2xx"),
    ];
    let histogram_done = |text: &str| {
        total(
            text,
            "meshwasm_request_duration_milliseconds_count",
            &[("route", "/orders")],
        ) >= n
            || total(
                text,
                "meshwasm_request_duration_milliseconds_count",
                &[("route", "/charge")],
            ) >= n
    };

    // Ingress: the client side of the call to order, named by order's sidecar.
    let ingress = prometheus_when(&mesh, INGRESS, histogram_done);
    let mut want = placed.to_vec();
    want.extend([
        ("reporter", "outbound"),
        ("destination_workload", order.as_str()),
        ("tenant", "acme"),
    ]);
    assert_eq!(
        total(&ingress, "meshwasm_requests_total", &want),
        n,
        "{ingress}"
    );
    assert_eq!(
        total(
            &ingress,
            "meshwasm_request_duration_milliseconds_count",
            &want
        ),
        n
    );
    assert_eq!(total(&ingress, "meshwasm_request_bytes_count", &want), n);
    assert_eq!(total(&ingress, "meshwasm_response_bytes_count", &want), n);
    // Envoy's default millisecond buckets, cumulative up to +Inf.
    let mut inf = want.clone();
    inf.push(("le", "+Inf"));
    assert_eq!(
        total(
            &ingress,
            "meshwasm_request_duration_milliseconds_bucket",
            &inf
        ),
        n
    );
    for le in [
        "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "3600000",
    ] {
        let mut bucket = want.clone();
        bucket.push(("le", le));
        assert_eq!(
            samples(&ingress, "meshwasm_request_duration_milliseconds_bucket")
                .iter()
                .filter(|s| bucket
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
                .count(),
            1,
            "bucket le={le} missing"
        );
    }
    assert!(
        !ingress.contains("envoy_meshwasm"),
        "wasm metrics got Envoy's prefix"
    );
    assert_eq!(
        total(
            &ingress,
            "meshwasm_requests_in_flight",
            &[("route", "/orders")]
        ),
        0.0
    );

    // order's sidecar: the server side of the same requests, and its call to payment.
    let order_text = prometheus_when(&mesh, &order, histogram_done);
    let mut inbound = placed.to_vec();
    inbound.extend([
        ("reporter", "inbound"),
        ("destination_workload", order.as_str()),
        ("tenant", "acme"),
    ]);
    assert_eq!(
        total(&order_text, "meshwasm_requests_total", &inbound),
        n,
        "{order_text}"
    );
    let charge = [
        ("reporter", "outbound"),
        ("source_workload", order.as_str()),
        ("destination_workload", payment.as_str()),
        ("route", "/charge"),
        ("method", "POST"),
        ("response_code_class", "2xx"),
    ];
    assert_eq!(total(&order_text, "meshwasm_requests_total", &charge), n);

    // payment's sidecar: the server side of the charge, caller named by order's sidecar.
    let payment_text = prometheus_when(&mesh, &payment, histogram_done);
    let served = [
        ("reporter", "inbound"),
        ("source_workload", order.as_str()),
        ("destination_workload", payment.as_str()),
        ("route", "/charge"),
        ("method", "POST"),
        ("response_code_class", "2xx"),
    ];
    assert_eq!(
        total(&payment_text, "meshwasm_requests_total", &served),
        n,
        "{payment_text}"
    );
    assert_eq!(
        total(
            &payment_text,
            "meshwasm_request_duration_milliseconds_count",
            &served
        ),
        n
    );
    // Raw paths never become labels.
    for text in [&ingress, &order_text, &payment_text] {
        for sample in samples(text, "meshwasm_requests_total") {
            let route = &sample.labels["route"];
            assert!(
                [
                    "/orders",
                    "/orders/{id}",
                    "/charge",
                    "/reserve",
                    "/inventory/{sku}",
                    "/healthz",
                    "/faults",
                    "other"
                ]
                .contains(&route.as_str()),
                "unexpected route label {route}"
            );
        }
    }
}

#[test]
fn two_thousand_tenants_give_at_most_k_plus_one_label_values() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let agent = http::agent();
    let url = format!("{}/healthz", mesh.ready.ingress);
    for tenant in 0..2_000 {
        let id = format!("tenant-{tenant}");
        let response = http::get(&agent, &url, &[("x-tenant-id", &id)]).unwrap();
        assert_eq!(response.status, 200, "{}", response.body);
    }
    let text = mesh.prometheus(INGRESS).unwrap();
    let tenants: BTreeSet<String> = samples(&text, "meshwasm_requests_total")
        .into_iter()
        .map(|s| s.labels["tenant"].clone())
        .filter(|tenant| tenant != "unknown")
        .collect();
    assert_eq!(tenants.len(), K + 1, "{tenants:?}");
    assert!(tenants.contains("other"));
    assert_eq!(
        total(
            &text,
            "meshwasm_requests_total",
            &[("route", "/healthz"), ("tenant", "other")]
        ),
        (2_000 - K) as f64
    );
    assert_eq!(
        total(
            &text,
            "meshwasm_telemetry_folded_values_total",
            &[("label", "tenant")]
        ),
        (2_000 - K) as f64
    );
}

#[test]
fn one_trace_id_reaches_the_last_hop_and_every_access_log_and_no_credential_is_logged() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let agent = http::agent();
    let payment = workload_starting_with(&mesh, "payment");
    let order = workload_starting_with(&mesh, "order");

    let bogus_bearer = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJzZWNyZXQtc3ViamVjdCJ9.c2VjcmV0LXNpZw";
    let valid_bearer = bearer();
    let valid_signature = valid_bearer.rsplit('.').next().unwrap().to_owned();
    let cookie = "session=secret-cookie-value-42";
    // A secret in the query (not `access_token`: the gateway's jwt_authn of
    // 40-security.yaml reads that parameter and refuses what is not a JWT).
    let url = format!(
        "{}/orders?api_key=secret-query-token-42",
        mesh.ready.ingress
    );
    let body = json!({"sku": "sku-1", "quantity": 1, "user": "e2e"});
    // No traceparent: the gateway starts the trace and names it in `x-trace-id`.
    let response = http::post_json(
        &agent,
        &url,
        &body,
        &[
            ("authorization", valid_bearer.as_str()),
            ("cookie", cookie),
            ("x-tenant-id", "acme"),
        ],
    )
    .unwrap();
    assert_eq!(response.status, 201, "{}", response.body);
    let trace_id = response
        .header("x-trace-id")
        .expect("x-trace-id header")
        .to_owned();
    assert_eq!(trace_id.len(), 32);
    assert!(trace_id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_ne!(trace_id, "0".repeat(32));
    // A request with a (bogus) bearer token, whatever authz makes of it.
    let _ = http::post_json(
        &agent,
        &url,
        &body,
        &[("authorization", bogus_bearer), ("cookie", cookie)],
    )
    .unwrap();

    // The last hop's app got a traceparent carrying the same trace id.
    let deadline = Instant::now() + Duration::from_secs(10);
    let payment_app = loop {
        let log = mesh.log(&format!("{payment}.app"));
        if log.contains(&trace_id) || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let traceparents: Vec<String> = payment_app
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(&line[line.find('{')?..]).ok())
        .filter_map(|entry| entry["trace"]["traceparent"].as_str().map(str::to_owned))
        .filter(|traceparent| traceparent.contains(&trace_id))
        .collect();
    assert_eq!(traceparents.len(), 1, "payment app log:\n{payment_app}");
    assert!(traceparents[0].starts_with(&format!("00-{trace_id}-")));

    // Each hop's access log has the request under that one trace id: ingress
    // (outbound), order (inbound + outbound to payment), payment (inbound).
    let lines_for = |process: &str| -> Vec<Value> {
        access_lines(&mesh.log(process))
            .into_iter()
            .filter(|line| line["trace_id"] == trace_id.as_str())
            .collect()
    };
    let ingress_lines = lines_for(INGRESS);
    assert_eq!(ingress_lines.len(), 1, "{ingress_lines:?}");
    assert_eq!(ingress_lines[0]["route"], "/orders");
    assert_eq!(ingress_lines[0]["trace_origin"], "new");
    assert_eq!(ingress_lines[0]["code"], 201);
    // The decision authz recorded in filter state (`meshwasm.authz`).
    assert_eq!(ingress_lines[0]["authz"], "allow", "{ingress_lines:?}");
    let order_lines = lines_for(&format!("{order}.sidecar"));
    assert!(
        order_lines
            .iter()
            .any(|l| l["reporter"] == "inbound" && l["route"] == "/orders"),
        "{order_lines:?}"
    );
    // The breaker guarding the call recorded its state (`meshwasm.breaker`).
    assert!(
        order_lines.iter().any(|l| l["reporter"] == "outbound"
            && l["route"] == "/charge"
            && l["breaker_state"] == "closed"),
        "{order_lines:?}"
    );
    assert!(order_lines.iter().all(|l| l["trace_origin"] == "w3c"));
    let payment_lines = lines_for(&format!("{payment}.sidecar"));
    assert!(
        payment_lines
            .iter()
            .any(|l| l["reporter"] == "inbound" && l["route"] == "/charge"),
        "{payment_lines:?}"
    );

    // No credential in any process's log; no query string in any access line.
    for process in mesh.process_names() {
        let log = mesh.log(&process);
        for secret in [
            "secret-cookie-value-42",
            "c2VjcmV0LXNpZw",
            "eyJzdWIiOiJzZWNyZXQtc3ViamVjdCJ9",
            valid_signature.as_str(),
        ] {
            assert!(!log.contains(secret), "{secret} logged by {process}");
        }
        for line in access_lines(&log) {
            let text = line.to_string();
            assert!(
                !text.contains("secret-query-token-42") && !text.contains('?'),
                "{process}: {text}"
            );
        }
    }
}

/// On Envoy 1.40 one worker's root context serves all of a sidecar's listeners,
/// inbound and outbound (1.38 and 1.39 give each listener its own): with one
/// worker, order's sidecar first sees the inbound `/orders`, then its own
/// outbound `/reserve` and `/charge`, and each must be reported by the listener
/// it came through. A direction kept from the first request labelled the
/// outbound calls `inbound` on 1.40 (`make test-e2e E2E_MATRIX=1.31:1.40.0`).
#[test]
fn the_reporter_follows_each_requests_listener_on_one_worker() {
    let mesh = Mesh::start(MeshOptions {
        concurrency: 1,
        ..MeshOptions::default()
    })
    .unwrap();
    let agent = http::agent();
    for _ in 0..2 {
        place_order(&agent, &mesh, &[]);
    }
    let order = workload_starting_with(&mesh, "order");
    let count = |text: &str, reporter: &str, route: &str| {
        total(
            text,
            "meshwasm_requests_total",
            &[("reporter", reporter), ("route", route)],
        )
    };
    let text = prometheus_when(&mesh, &order, |text| {
        count(text, "outbound", "/charge") + count(text, "inbound", "/charge") >= 2.0
    });
    assert_eq!(count(&text, "inbound", "/orders"), 2.0, "{text}");
    assert_eq!(count(&text, "outbound", "/reserve"), 2.0, "{text}");
    assert_eq!(count(&text, "outbound", "/charge"), 2.0, "{text}");
    assert_eq!(count(&text, "inbound", "/reserve"), 0.0, "{text}");
    assert_eq!(count(&text, "outbound", "/orders"), 0.0, "{text}");
}
