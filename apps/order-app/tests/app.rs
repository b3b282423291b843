//! The three services over real HTTP on 127.0.0.1.

// Test fixtures may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use order_app::order::UNIT_PRICE_CENTS;
use order_app::payment::Faults;
use serde_json::{json, Value};
use support::*;

const NO_FAULTS: Faults = Faults {
    error_rate: 0.0,
    latency_ms: 0,
};

const TRACE: [(&str, &str); 11] = [
    (
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ),
    ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
    ("baggage", "userId=alice,isProduction=false"),
    ("x-request-id", "6b1e9d6c-6f0e-4f5a-9d0a-1f2e3d4c5b6a"),
    ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ("x-b3-spanid", "e457b5a2e4d86bd1"),
    ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
    ("x-b3-sampled", "1"),
    ("x-b3-flags", "0"),
    ("x-ot-span-context", "ot-context-value"),
];

fn order_body() -> Value {
    json!({"sku": "book-1", "quantity": 2, "user": "alice"})
}

async fn post_with_trace(url: &str, body: Value) -> Reply {
    let mut request = client().post(url).json(&body);
    for (name, value) in TRACE {
        request = request.header(name, value);
    }
    send(request.header("authorization", "Bearer secret")).await
}

fn trace_object() -> Value {
    Value::Object(
        TRACE
            .iter()
            .map(|(name, value)| ((*name).to_owned(), json!(value)))
            .collect(),
    )
}

// ---- order: the happy path ----

#[tokio::test]
async fn an_order_reserves_charges_and_is_stored() {
    let app = start_app("v2", 100, NO_FAULTS).await;

    let placed = post(&format!("{}/orders", app.order.url), order_body()).await;
    assert_eq!(placed.status, 201, "{}", placed.text);
    assert_eq!(placed.header("x-app-version"), Some("v1"));
    let order = placed.json();
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(
        placed.header("location"),
        Some(format!("/orders/{id}").as_str())
    );
    assert_eq!(order["sku"], "book-1");
    assert_eq!(order["quantity"], 2);
    assert_eq!(order["user"], "alice");
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["inventory_version"], "v2");
    assert!(order["charge_id"].as_str().unwrap().starts_with("ch-"));

    let fetched = get(&format!("{}/orders/{id}", app.order.url)).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json(), order);

    let stock = get(&format!("{}/inventory/book-1", app.inventory.url)).await;
    assert_eq!(stock.json()["available"], 98);

    let second = post(&format!("{}/orders", app.order.url), order_body()).await;
    assert_ne!(second.json()["id"], order["id"], "order ids are unique");
}

#[tokio::test]
async fn order_sends_the_reservation_and_the_charge_amount() {
    let inventory = start_fake(Script::new(200, r#"{"version": "v9", "reserved": 3}"#)).await;
    let payment = start_fake(Script::new(
        200,
        r#"{"charge_id": "ch-1", "status": "charged"}"#,
    ))
    .await;
    let order = start_order(&inventory.url, &payment.url, Duration::from_secs(5)).await;

    let placed = post(
        &format!("{}/orders", order.url),
        json!({"sku": "pen", "quantity": 3, "user": "bob"}),
    )
    .await;
    assert_eq!(placed.status, 201, "{}", placed.text);
    let id = placed.json()["id"].clone();
    assert_eq!(placed.json()["inventory_version"], "v9");

    let (_, reserve) = &inventory.requests()[0];
    assert_eq!(
        reserve,
        &json!({"sku": "pen", "quantity": 3, "order_id": id})
    );
    let (_, charge) = &payment.requests()[0];
    assert_eq!(
        charge,
        &json!({"order_id": id, "user": "bob", "amount": 3 * UNIT_PRICE_CENTS})
    );
}

#[tokio::test]
async fn unknown_order_is_a_json_404() {
    let app = start_app("v1", 10, NO_FAULTS).await;
    let missing = get(&format!("{}/orders/nope", app.order.url)).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error(), "order not found");
}

// ---- order: validation ----

#[tokio::test]
async fn invalid_orders_are_rejected_before_any_upstream_call() {
    let inventory = start_fake(Script::new(200, "{}")).await;
    let payment = start_fake(Script::new(200, "{}")).await;
    let order = start_order(&inventory.url, &payment.url, Duration::from_secs(5)).await;
    let orders = format!("{}/orders", order.url);

    let cases: [(&str, &str); 12] = [
        ("", "empty"),
        ("{not json", "invalid JSON body"),
        ("[1, 2]", "invalid JSON body"),
        (r#"{"quantity": 1, "user": "a"}"#, "missing field `sku`"),
        (r#"{"sku": "a", "user": "a"}"#, "missing field `quantity`"),
        (r#"{"sku": "a", "quantity": 1}"#, "missing field `user`"),
        (r#"{"sku": 7, "quantity": 1, "user": "a"}"#, "`sku`"),
        (
            r#"{"sku": "a", "quantity": "2", "user": "a"}"#,
            "`quantity`",
        ),
        (
            r#"{"sku": "a", "quantity": 1.5, "user": "a"}"#,
            "`quantity`",
        ),
        (
            r#"{"sku": "a", "quantity": 0, "user": "a"}"#,
            "`quantity` must be",
        ),
        (
            r#"{"sku": " ", "quantity": 1, "user": "a"}"#,
            "`sku` must be a non-empty string",
        ),
        (
            r#"{"sku": "a", "quantity": 1, "user": ""}"#,
            "`user` must be a non-empty string",
        ),
    ];
    for (body, expected) in cases {
        let reply = post_raw(&orders, body).await;
        assert_eq!(reply.status, 400, "body {body:?}: {}", reply.text);
        let message = reply.error();
        assert!(message.contains(expected), "body {body:?}: {message}");
    }
    let negative = post(&orders, json!({"sku": "a", "quantity": -3, "user": "a"})).await;
    assert_eq!(negative.status, 400);
    let huge = post(
        &orders,
        json!({"sku": "a", "quantity": 1_000_000_000_000i64, "user": "a"}),
    )
    .await;
    assert_eq!(huge.status, 400);

    assert!(inventory.requests().is_empty());
    assert!(payment.requests().is_empty());
}

#[tokio::test]
async fn a_body_without_json_content_type_is_still_parsed() {
    let app = start_app("v1", 10, NO_FAULTS).await;
    let reply = send(
        client()
            .post(format!("{}/orders", app.order.url))
            .header("content-type", "text/plain")
            .body(r#"{"sku": "a", "quantity": 1, "user": "u"}"#),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
}

// ---- order: upstream failures ----

#[tokio::test]
async fn short_stock_is_a_409_with_the_inventory_answer() {
    let app = start_app("v1", 1, NO_FAULTS).await;
    let reply = post(&format!("{}/orders", app.order.url), order_body()).await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["error"], "insufficient stock");
    assert_eq!(body["upstream"], "inventory");
    assert_eq!(body["upstream_status"], 409);
    assert_eq!(body["upstream_body"]["available"], 1);
    assert_eq!(body["upstream_body"]["requested"], 2);
}

#[tokio::test]
async fn upstream_503_keeps_status_retry_after_and_meshwasm_headers() {
    let inventory = start_fake(
        Script::new(503, r#"{"type": "about:blank", "kind": "circuit_open"}"#)
            .header("retry-after", "7")
            .header("x-meshwasm-breaker", "open")
            .header("x-unrelated", "dropped"),
    )
    .await;
    let payment = start_fake(Script::new(200, "{}")).await;
    let order = start_order(&inventory.url, &payment.url, Duration::from_secs(5)).await;

    let reply = post(&format!("{}/orders", order.url), order_body()).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(reply.header("x-meshwasm-breaker"), Some("open"));
    assert_eq!(reply.header("x-unrelated"), None);
    assert_eq!(
        reply.json(),
        json!({
            "error": "inventory unavailable",
            "upstream": "inventory",
            "upstream_status": 503,
            "upstream_body": {"type": "about:blank", "kind": "circuit_open"},
        })
    );
    assert!(payment.requests().is_empty(), "no charge without stock");
}

#[tokio::test]
async fn payment_429_keeps_its_status_and_text_body() {
    let inventory = start_fake(Script::new(200, r#"{"version": "v1"}"#)).await;
    let payment = start_fake(Script::new(429, "slow down").header("retry-after", "1")).await;
    let order = start_order(&inventory.url, &payment.url, Duration::from_secs(5)).await;

    let reply = post(&format!("{}/orders", order.url), order_body()).await;
    assert_eq!(reply.status, 429, "{}", reply.text);
    assert_eq!(reply.header("retry-after"), Some("1"));
    let body = reply.json();
    assert_eq!(body["upstream"], "payment");
    assert_eq!(body["upstream_status"], 429);
    assert_eq!(body["upstream_body"], "slow down");
}

#[tokio::test]
async fn other_upstream_statuses_are_502() {
    let inventory = start_fake(Script::new(200, r#"{"version": "v1"}"#)).await;
    let payment =
        start_fake(Script::new(500, r#"{"error": "boom"}"#).header("retry-after", "5")).await;
    let order = start_order(&inventory.url, &payment.url, Duration::from_secs(5)).await;

    let reply = post(&format!("{}/orders", order.url), order_body()).await;
    assert_eq!(reply.status, 502, "{}", reply.text);
    assert_eq!(reply.header("retry-after"), None);
    let body = reply.json();
    assert_eq!(body["error"], "payment failed");
    assert_eq!(body["upstream_status"], 500);
    assert_eq!(body["upstream_body"], json!({"error": "boom"}));

    // A 409 means short stock only when inventory says it.
    let conflict = start_fake(Script::new(409, "{}")).await;
    let order = start_order(&inventory.url, &conflict.url, Duration::from_secs(5)).await;
    let reply = post(&format!("{}/orders", order.url), order_body()).await;
    assert_eq!(reply.status, 502, "{}", reply.text);
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let closed = closed_port_url().await;
    let payment = start_fake(Script::new(200, "{}")).await;
    let order = start_order(&closed, &payment.url, Duration::from_secs(5)).await;

    let reply = post(&format!("{}/orders", order.url), order_body()).await;
    assert_eq!(reply.status, 502, "{}", reply.text);
    let body = reply.json();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("inventory unreachable"),
        "{body}"
    );
    assert_eq!(body["upstream"], "inventory");
    assert_eq!(body["upstream_status"], Value::Null);
    assert_eq!(body["upstream_body"], Value::Null);
}

#[tokio::test]
async fn slow_upstream_is_a_502_timeout() {
    let inventory =
        start_fake(Script::new(200, r#"{"version": "v1"}"#).delay(Duration::from_secs(3))).await;
    let payment = start_fake(Script::new(200, "{}")).await;
    let order = start_order(&inventory.url, &payment.url, Duration::from_millis(100)).await;

    let reply = post(&format!("{}/orders", order.url), order_body()).await;
    assert_eq!(reply.status, 502, "{}", reply.text);
    assert_eq!(reply.json()["error"], "inventory timed out");
}

#[tokio::test]
async fn malformed_successful_answers_are_502() {
    let inventory = start_fake(Script::new(200, "not json")).await;
    let payment = start_fake(Script::new(200, "{}")).await;
    let order = start_order(&inventory.url, &payment.url, Duration::from_secs(5)).await;
    let reply = post(&format!("{}/orders", order.url), order_body()).await;
    assert_eq!(reply.status, 502, "{}", reply.text);
    assert_eq!(reply.json()["upstream_status"], 200);

    let inventory = start_fake(Script::new(200, r#"{"version": "v1"}"#)).await;
    let payment = start_fake(Script::new(200, r#"{"status": "charged"}"#)).await;
    let order = start_order(&inventory.url, &payment.url, Duration::from_secs(5)).await;
    let reply = post(&format!("{}/orders", order.url), order_body()).await;
    assert_eq!(reply.status, 502, "{}", reply.text);
    assert_eq!(reply.json()["error"], "payment answer has no `charge_id`");
}

// ---- trace propagation ----

#[tokio::test]
async fn trace_headers_are_forwarded_unchanged_on_both_calls() {
    let inventory = start_fake(Script::new(200, r#"{"version": "v1"}"#)).await;
    let payment = start_fake(Script::new(200, r#"{"charge_id": "ch-1"}"#)).await;
    let order = start_order(&inventory.url, &payment.url, Duration::from_secs(5)).await;

    let reply = post_with_trace(&format!("{}/orders", order.url), order_body()).await;
    assert_eq!(reply.status, 201, "{}", reply.text);

    for fake in [&inventory, &payment] {
        let requests = fake.requests();
        let (headers, _) = &requests[0];
        for (name, value) in TRACE {
            let received: Vec<_> = headers.get_all(name).iter().collect();
            assert_eq!(received, [value], "{name}");
        }
        assert!(
            headers.get("authorization").is_none(),
            "only trace headers are forwarded"
        );
    }
}

#[tokio::test]
async fn every_hop_logs_the_trace_headers_it_received() {
    let app = start_app("v2", 10, NO_FAULTS).await;
    let reply = post_with_trace(&format!("{}/orders", app.order.url), order_body()).await;
    assert_eq!(reply.status, 201, "{}", reply.text);

    let hops = [
        (&app.order, "order", "v1", "/orders", 201),
        (&app.inventory, "inventory", "v2", "/reserve", 200),
        (&app.payment, "payment", "v1", "/charge", 200),
    ];
    for (started, service, version, path, status) in hops {
        let lines = started.info.log().lines();
        assert_eq!(lines.len(), 1, "{service}: {lines:?}");
        let line = &lines[0];
        let mut keys: Vec<_> = line.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "duration_ms",
                "method",
                "path",
                "service",
                "status",
                "trace",
                "ts",
                "version"
            ]
        );
        assert_eq!(line["service"], service);
        assert_eq!(line["version"], version);
        assert_eq!(line["method"], "POST");
        assert_eq!(line["path"], path);
        assert_eq!(line["status"], status);
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(line["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(line["trace"], trace_object(), "{service}");
    }
}

#[tokio::test]
async fn requests_without_trace_headers_log_an_empty_trace() {
    let app = start_app("v1", 10, NO_FAULTS).await;
    get(&format!("{}/healthz", app.inventory.url)).await;
    let lines = app.inventory.info.log().lines();
    assert_eq!(lines[0]["trace"], json!({}));
    assert_eq!(lines[0]["path"], "/healthz");
}

// ---- inventory ----

#[tokio::test]
async fn inventory_reports_stock_and_its_version_everywhere() {
    let inventory = start_inventory("v2", 5).await;

    let stock = get(&format!("{}/inventory/widget", inventory.url)).await;
    assert_eq!(stock.status, 200);
    assert_eq!(
        stock.json(),
        json!({"sku": "widget", "available": 5, "version": "v2"})
    );

    let reserved = post(
        &format!("{}/reserve", inventory.url),
        json!({"sku": "widget", "quantity": 3, "order_id": "o-1"}),
    )
    .await;
    assert_eq!(
        reserved.json(),
        json!({"sku": "widget", "reserved": 3, "remaining": 2, "version": "v2"})
    );
    let without_order_id = post(
        &format!("{}/reserve", inventory.url),
        json!({"sku": "widget", "quantity": 2}),
    )
    .await;
    assert_eq!(without_order_id.json()["remaining"], 0);

    let short = post(
        &format!("{}/reserve", inventory.url),
        json!({"sku": "widget", "quantity": 1}),
    )
    .await;
    assert_eq!(short.status, 409);
    assert_eq!(short.error(), "insufficient stock");

    let missing = get(&format!("{}/nowhere", inventory.url)).await;
    for reply in [&stock, &reserved, &short, &missing] {
        assert_eq!(reply.header("x-inventory-version"), Some("v2"));
        assert_eq!(reply.header("x-app-version"), Some("v2"));
    }
}

#[tokio::test]
async fn inventory_rejects_invalid_reservations() {
    let inventory = start_inventory("v1", 5).await;
    let reserve = format!("{}/reserve", inventory.url);
    let cases: [(&str, &str); 5] = [
        ("nope", "invalid JSON body"),
        (r#"{"quantity": 1}"#, "missing field `sku`"),
        (r#"{"sku": "a", "quantity": 0}"#, "`quantity` must be"),
        (
            r#"{"sku": "", "quantity": 1}"#,
            "`sku` must be a non-empty string",
        ),
        (
            r#"{"sku": "a", "quantity": 1, "order_id": 5}"#,
            "`order_id`",
        ),
    ];
    for (body, expected) in cases {
        let reply = post_raw(&reserve, body).await;
        assert_eq!(reply.status, 400, "body {body:?}: {}", reply.text);
        let message = reply.error();
        assert!(message.contains(expected), "body {body:?}: {message}");
    }
}

// ---- payment and its fault knobs ----

#[tokio::test]
async fn payment_charges_and_validates() {
    let payment = start_payment(NO_FAULTS).await;
    let charge = format!("{}/charge", payment.url);

    let charged = post(
        &charge,
        json!({"order_id": "o-1", "user": "alice", "amount": 2500}),
    )
    .await;
    assert_eq!(charged.status, 200, "{}", charged.text);
    assert_eq!(charged.json()["status"], "charged");
    assert!(charged.json()["charge_id"]
        .as_str()
        .unwrap()
        .starts_with("ch-"));

    let cases: [(&str, &str); 4] = [
        (
            r#"{"order_id": "o", "user": "u"}"#,
            "missing field `amount`",
        ),
        (
            r#"{"order_id": "o", "user": "u", "amount": 0}"#,
            "`amount` must be",
        ),
        (
            r#"{"order_id": "o", "user": "u", "amount": "5"}"#,
            "`amount`",
        ),
        (
            r#"{"order_id": "", "user": "u", "amount": 5}"#,
            "`order_id` must be",
        ),
    ];
    for (body, expected) in cases {
        let reply = post_raw(&charge, body).await;
        assert_eq!(reply.status, 400, "body {body:?}: {}", reply.text);
        let message = reply.error();
        assert!(message.contains(expected), "body {body:?}: {message}");
    }
}

#[tokio::test]
async fn fault_knobs_are_read_back_and_validated() {
    let payment = start_payment(Faults {
        error_rate: 0.25,
        latency_ms: 10,
    })
    .await;
    let faults = format!("{}/faults", payment.url);

    assert_eq!(
        get(&faults).await.json(),
        json!({"error_rate": 0.25, "latency_ms": 10})
    );

    let set = post(&faults, json!({"error_rate": 0.5, "latency_ms": 0})).await;
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(set.json(), json!({"error_rate": 0.5, "latency_ms": 0}));
    let partial = post(&faults, json!({"error_rate": 1})).await;
    assert_eq!(partial.json(), json!({"error_rate": 1.0, "latency_ms": 0}));

    let cases: [(&str, &str); 8] = [
        (
            r#"{"error_rate": 1.5}"#,
            "`error_rate` must be a number between 0.0 and 1.0",
        ),
        (r#"{"error_rate": -0.1}"#, "`error_rate` must be"),
        (r#"{"error_rate": "high"}"#, "`error_rate`"),
        (
            r#"{"latency_ms": -1}"#,
            "`latency_ms` must be an integer between 0 and 60000",
        ),
        (r#"{"latency_ms": 60001}"#, "`latency_ms` must be"),
        (r#"{"latency_ms": 1.5}"#, "`latency_ms`"),
        (r#"{"errorRate": 0.5}"#, "unknown field `errorRate`"),
        ("{}", "at least one of"),
    ];
    for (body, expected) in cases {
        let reply = post_raw(&faults, body).await;
        assert_eq!(reply.status, 400, "body {body:?}: {}", reply.text);
        let message = reply.error();
        assert!(message.contains(expected), "body {body:?}: {message}");
    }
    assert_eq!(
        get(&faults).await.json(),
        json!({"error_rate": 1.0, "latency_ms": 0}),
        "rejected updates change nothing"
    );
}

#[tokio::test]
async fn error_rate_one_fails_every_charge_and_order_passes_the_503_on() {
    let app = start_app("v1", 100, NO_FAULTS).await;
    let set = post(
        &format!("{}/faults", app.payment.url),
        json!({"error_rate": 1.0}),
    )
    .await;
    assert_eq!(set.status, 200);

    for _ in 0..3 {
        let charged = post(
            &format!("{}/charge", app.payment.url),
            json!({"order_id": "o", "user": "u", "amount": 1}),
        )
        .await;
        assert_eq!(charged.status, 503);
        assert_eq!(charged.json(), json!({"error": "injected fault"}));
    }

    let reply = post(&format!("{}/orders", app.order.url), order_body()).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(
        reply.json(),
        json!({
            "error": "payment unavailable",
            "upstream": "payment",
            "upstream_status": 503,
            "upstream_body": {"error": "injected fault"},
        })
    );

    post(
        &format!("{}/faults", app.payment.url),
        json!({"error_rate": 0}),
    )
    .await;
    let reply = post(&format!("{}/orders", app.order.url), order_body()).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
}

#[tokio::test]
async fn added_latency_applies_to_charges_only() {
    let inventory = start_inventory("v1", 100).await;
    let payment = start_payment(NO_FAULTS).await;
    let order = start_order(&inventory.url, &payment.url, Duration::from_millis(200)).await;
    post(
        &format!("{}/faults", payment.url),
        json!({"latency_ms": 2000}),
    )
    .await;

    // The order gives up on the slow charge...
    let reply = post(&format!("{}/orders", order.url), order_body()).await;
    assert_eq!(reply.status, 502, "{}", reply.text);
    assert_eq!(reply.json()["error"], "payment timed out");

    // ...while payment's other routes answer at once.
    let quick = client()
        .get(format!("{}/faults", payment.url))
        .timeout(Duration::from_millis(1000));
    assert_eq!(send(quick).await.status, 200);
}

// ---- common routes, fallbacks, metrics ----

#[tokio::test]
async fn every_service_has_healthz_and_json_fallbacks() {
    let app = start_app("v2", 10, NO_FAULTS).await;
    for (started, service, version) in [
        (&app.order, "order", "v1"),
        (&app.inventory, "inventory", "v2"),
        (&app.payment, "payment", "v1"),
    ] {
        let health = get(&format!("{}/healthz", started.url)).await;
        assert_eq!(health.status, 200);
        assert_eq!(
            health.json(),
            json!({"status": "ok", "service": service, "version": version})
        );
        assert_eq!(health.header("x-app-version"), Some(version));

        let missing = get(&format!("{}/no/such/route", started.url)).await;
        assert_eq!(missing.status, 404);
        assert!(missing
            .error()
            .starts_with("no route for GET /no/such/route"));
        assert_eq!(missing.header("x-app-version"), Some(version));

        let wrong_method = send(client().delete(format!("{}/healthz", started.url))).await;
        assert_eq!(wrong_method.status, 405);
        assert!(wrong_method.error().contains("not allowed"));
    }
}

#[tokio::test]
async fn metrics_count_by_route_template() {
    let app = start_app("v1", 10, NO_FAULTS).await;
    for id in ["a", "b", "c"] {
        get(&format!("{}/orders/{id}", app.order.url)).await;
    }
    post(&format!("{}/orders", app.order.url), order_body()).await;
    post_raw(&format!("{}/orders", app.order.url), "{").await;
    get(&format!("{}/secret/path", app.order.url)).await;

    let metrics = get(&format!("{}/metrics", app.order.url)).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text;
    for line in [
        "# TYPE app_requests_total counter",
        r#"app_requests_total{service="order",version="v1",route="/orders/{id}",code="404"} 3"#,
        r#"app_requests_total{service="order",version="v1",route="/orders",code="201"} 1"#,
        r#"app_requests_total{service="order",version="v1",route="/orders",code="400"} 1"#,
        r#"app_requests_total{service="order",version="v1",route="unmatched",code="404"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(
        !text.contains("/orders/a"),
        "raw paths never become labels:\n{text}"
    );
    assert!(!text.contains("/secret"), "{text}");

    let inventory_metrics = get(&format!("{}/metrics", app.inventory.url)).await.text;
    assert!(
        inventory_metrics.contains(r#"route="/reserve",code="200"} 1"#),
        "{inventory_metrics}"
    );
}
