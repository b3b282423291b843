//! Shared test fixtures: the real routers on 127.0.0.1:0 with in-memory
//! access logs, scripted fake upstreams, and a direct (proxy-less) client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use order_app::inventory::{self, InventoryConfig};
use order_app::order::{self, OrderConfig, OutboundProxy};
use order_app::payment::{self, Faults};
use order_app::server;
use order_app::telemetry::AccessLog;
use order_app::ServiceInfo;
use serde_json::Value;

pub fn info(name: &'static str, version: &str) -> ServiceInfo {
    ServiceInfo::new(name, version, AccessLog::memory()).unwrap()
}

pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub struct Started {
    pub url: String,
    pub info: ServiceInfo,
}

pub async fn start_inventory(version: &str, stock_per_sku: i64) -> Started {
    let info = info("inventory", version);
    let router = inventory::router(info.clone(), InventoryConfig { stock_per_sku });
    Started {
        url: url(server::spawn(router).await.unwrap()),
        info,
    }
}

pub async fn start_payment(faults: Faults) -> Started {
    let info = info("payment", "v1");
    let router = payment::router(info.clone(), faults);
    Started {
        url: url(server::spawn(router).await.unwrap()),
        info,
    }
}

pub async fn start_order(inventory_url: &str, payment_url: &str, timeout: Duration) -> Started {
    let info = info("order", "v1");
    let config = OrderConfig {
        inventory_url: inventory_url.to_owned(),
        payment_url: payment_url.to_owned(),
        upstream_timeout: timeout,
        proxy: OutboundProxy::Direct,
    };
    let router = order::router(info.clone(), config).unwrap();
    Started {
        url: url(server::spawn(router).await.unwrap()),
        info,
    }
}

/// The whole app wired together: order → inventory (`inventory_version`) and payment.
pub struct App {
    pub order: Started,
    pub inventory: Started,
    pub payment: Started,
}

pub async fn start_app(inventory_version: &str, stock_per_sku: i64, faults: Faults) -> App {
    let inventory = start_inventory(inventory_version, stock_per_sku).await;
    let payment = start_payment(faults).await;
    let order = start_order(&inventory.url, &payment.url, Duration::from_secs(5)).await;
    App {
        order,
        inventory,
        payment,
    }
}

/// What a fake upstream answers.
#[derive(Clone)]
pub struct Script {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: &'static str,
    pub delay: Duration,
}

impl Script {
    pub fn new(status: u16, body: &'static str) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap(),
            headers: Vec::new(),
            body,
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A fake upstream that answers every request with `script` and keeps the
/// headers and bodies it received.
pub struct Fake {
    pub url: String,
    pub received: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
}

impl Fake {
    pub fn requests(&self) -> Vec<(HeaderMap, Value)> {
        self.received.lock().unwrap().clone()
    }
}

pub async fn start_fake(script: Script) -> Fake {
    let received: Arc<Mutex<Vec<(HeaderMap, Value)>>> = Arc::default();
    let router = Router::new()
        .fallback(answer)
        .with_state((script, received.clone()));
    Fake {
        url: url(server::spawn(router).await.unwrap()),
        received,
    }
}

type FakeState = (Script, Arc<Mutex<Vec<(HeaderMap, Value)>>>);

async fn answer(State((script, received)): State<FakeState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    received.lock().unwrap().push((parts.headers, body));
    tokio::time::sleep(script.delay).await;
    let mut response = (script.status, script.body).into_response();
    for (name, value) in script.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// The address of a port nothing listens on.
pub async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    url(addr)
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }

    /// The `error` message of a JSON error reply.
    pub fn error(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            self.text
        );
        self.json()["error"].as_str().unwrap().to_owned()
    }
}

pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.unwrap();
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await.unwrap(),
    }
}

pub async fn get(url: &str) -> Reply {
    send(client().get(url)).await
}

pub async fn post_raw(url: &str, body: &'static str) -> Reply {
    send(
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

pub async fn post(url: &str, body: Value) -> Reply {
    send(client().post(url).json(&body)).await
}
