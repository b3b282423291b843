//! With `HTTP_PROXY` set, order sends its upstream calls, service names
//! unresolved, to that proxy — as the local mesh's sidecars expect. This file
//! holds one test so that setting the variable affects nothing else.

// Test fixtures may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::header::HOST;
use axum::Json;
use axum::Router;
use order_app::order::{self, OrderConfig};
use order_app::server;
use serde_json::{json, Value};
use support::*;

type Seen = Arc<Mutex<Vec<(String, String)>>>;

async fn proxy(State(seen): State<Seen>, request: Request) -> Json<Value> {
    let host = request
        .headers()
        .get(HOST)
        .map(|host| host.to_str().unwrap().to_owned())
        .unwrap_or_default();
    seen.lock().unwrap().push((host, request.uri().to_string()));
    Json(json!({"version": "v7", "charge_id": "ch-proxied"}))
}

#[tokio::test]
async fn upstream_calls_go_through_http_proxy() {
    let seen: Seen = Arc::default();
    let proxy_addr = server::spawn(Router::new().fallback(proxy).with_state(seen.clone()))
        .await
        .unwrap();
    std::env::set_var("HTTP_PROXY", url(proxy_addr));
    for var in [
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        std::env::remove_var(var);
    }

    let info = info("order", "v1");
    let router = order::router(info, OrderConfig::default()).unwrap();
    let order = url(server::spawn(router).await.unwrap());

    let reply = post(
        &format!("{order}/orders"),
        json!({"sku": "a", "quantity": 1, "user": "u"}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.json()["inventory_version"], "v7");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (
                "inventory:8080".to_owned(),
                "http://inventory:8080/reserve".to_owned()
            ),
            (
                "payment:8080".to_owned(),
                "http://payment:8080/charge".to_owned()
            ),
        ]
    );
}
