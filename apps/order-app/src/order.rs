//! `order`: places orders by reserving stock at `inventory` and charging
//! `payment`, forwarding the caller's trace headers on both calls.
//!
//! - `POST /orders` `{sku, quantity, user}` → 201 with the stored order
//! - `GET /orders/{id}` → the order, or 404
//!
//! Upstream failures: inventory 409 → 409; upstream 503/429 → same status
//! with `retry-after` and `x-meshwasm-*` copied; anything else (other status,
//! timeout, unreachable, unreadable answer) → 502. Each error body is
//! `{error, upstream, upstream_status, upstream_body}`.
//!
//! Outbound calls go to the configured URLs unresolved; with `HTTP_PROXY`
//! set they go through that proxy (the local mesh's sidecar), as Istio's
//! traffic capture would send them through the sidecar.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::env::{self, EnvError};
use crate::extract::JsonBody;
use crate::trace::TraceHeaders;
use crate::validate;
use crate::{ApiError, ServiceInfo};

/// Price of one unit of any SKU, in cents.
pub const UNIT_PRICE_CENTS: i64 = 1250;

/// Largest quantity one order may ask for.
pub const MAX_QUANTITY: i64 = 1_000_000;

/// How outbound requests find their proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundProxy {
    /// `HTTP_PROXY` / `http_proxy` / `NO_PROXY` from the environment (the default).
    Environment,
    /// Connect straight to the upstream URL's host.
    Direct,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderConfig {
    /// Base URL of inventory (`INVENTORY_URL`, default `http://inventory:8080`).
    pub inventory_url: String,
    /// Base URL of payment (`PAYMENT_URL`, default `http://payment:8080`).
    pub payment_url: String,
    /// Whole-call timeout of each upstream call (`UPSTREAM_TIMEOUT_MS`, default 5000).
    pub upstream_timeout: Duration,
    pub proxy: OutboundProxy,
}

impl Default for OrderConfig {
    fn default() -> Self {
        Self {
            inventory_url: "http://inventory:8080".to_owned(),
            payment_url: "http://payment:8080".to_owned(),
            upstream_timeout: Duration::from_millis(5000),
            proxy: OutboundProxy::Environment,
        }
    }
}

impl OrderConfig {
    pub fn from_env() -> Result<Self, EnvError> {
        let defaults = Self::default();
        let inventory_url = base_url("INVENTORY_URL", &defaults.inventory_url)?;
        let payment_url = base_url("PAYMENT_URL", &defaults.payment_url)?;
        let timeout_ms: u64 = env::parse_or("UPSTREAM_TIMEOUT_MS", 5000)?;
        if timeout_ms == 0 {
            return Err(EnvError::new(
                "UPSTREAM_TIMEOUT_MS",
                "0",
                "must be at least 1",
            ));
        }
        Ok(Self {
            inventory_url,
            payment_url,
            upstream_timeout: Duration::from_millis(timeout_ms),
            proxy: OutboundProxy::Environment,
        })
    }
}

/// An `http(s)://` base URL from `var`, without a trailing slash.
fn base_url(var: &'static str, default: &str) -> Result<String, EnvError> {
    let raw = env::string_or(var, default)?;
    let url = reqwest::Url::parse(&raw).map_err(|err| EnvError::new(var, raw.clone(), err))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(EnvError::new(
            var,
            raw,
            "expected an http:// or https:// URL",
        ));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

#[derive(Debug, Deserialize)]
struct PlaceOrder {
    sku: String,
    quantity: i64,
    user: String,
}

#[derive(Debug, Clone, Serialize)]
struct Order {
    id: String,
    sku: String,
    quantity: i64,
    user: String,
    status: &'static str,
    inventory_version: String,
    charge_id: String,
}

#[derive(Debug)]
struct Orders {
    client: reqwest::Client,
    reserve_url: String,
    charge_url: String,
    placed: Mutex<HashMap<String, Order>>,
}

pub fn router(info: ServiceInfo, config: OrderConfig) -> Result<Router, reqwest::Error> {
    let mut client = reqwest::Client::builder().timeout(config.upstream_timeout);
    if config.proxy == OutboundProxy::Direct {
        client = client.no_proxy();
    }
    let orders = Arc::new(Orders {
        client: client.build()?,
        reserve_url: format!("{}/reserve", config.inventory_url.trim_end_matches('/')),
        charge_url: format!("{}/charge", config.payment_url.trim_end_matches('/')),
        placed: Mutex::default(),
    });
    let routes = Router::new()
        .route("/orders", post(place))
        .route("/orders/{id}", get(show))
        .with_state(orders);
    Ok(info.finish(routes))
}

async fn show(
    State(orders): State<Arc<Orders>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Order>, ApiError> {
    let Path(id) = id.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let placed = orders.placed.lock().unwrap_or_else(PoisonError::into_inner);
    placed.get(&id).cloned().map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            json!({"error": "order not found", "id": id}),
        )
    })
}

async fn place(
    State(orders): State<Arc<Orders>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<PlaceOrder>,
) -> Result<Response, ApiError> {
    validate::non_empty("sku", &request.sku)?;
    validate::non_empty("user", &request.user)?;
    validate::in_range("quantity", request.quantity, 1, MAX_QUANTITY)?;

    let trace = TraceHeaders::from_headers(&headers);
    let id = uuid::Uuid::new_v4().to_string();

    let reserved = Upstream::Inventory
        .call(
            &orders.client,
            &orders.reserve_url,
            &json!({"sku": request.sku, "quantity": request.quantity, "order_id": id}),
            &trace,
        )
        .await?;
    let inventory_version = reserved
        .body
        .get("version")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            reserved
                .headers
                .get(crate::inventory::X_INVENTORY_VERSION)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        })
        .ok_or_else(|| reserved.invalid("inventory answer names no version"))?;

    let charged = Upstream::Payment
        .call(
            &orders.client,
            &orders.charge_url,
            &json!({
                "order_id": id,
                "user": request.user,
                "amount": request.quantity * UNIT_PRICE_CENTS,
            }),
            &trace,
        )
        .await?;
    let charge_id = charged
        .body
        .get("charge_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| charged.invalid("payment answer has no `charge_id`"))?;

    let order = Order {
        id: id.clone(),
        sku: request.sku,
        quantity: request.quantity,
        user: request.user,
        status: "confirmed",
        inventory_version,
        charge_id,
    };
    orders
        .placed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id.clone(), order.clone());

    let location = HeaderValue::from_str(&format!("/orders/{id}"))
        .map_err(|err| ApiError::message(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(order)).into_response())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Inventory,
    Payment,
}

/// A 2xx upstream answer with a JSON body.
#[derive(Debug)]
struct Answer {
    upstream: Upstream,
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// A 502 for a 2xx answer that lacks what the order needs.
    fn invalid(&self, reason: &str) -> ApiError {
        self.upstream.error(
            StatusCode::BAD_GATEWAY,
            reason,
            Some(self.status),
            self.body.clone(),
        )
    }
}

impl Upstream {
    fn name(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::Payment => "payment",
        }
    }

    /// POSTs `body` with the trace headers and maps every failure to the
    /// response `order` gives its caller.
    async fn call(
        self,
        client: &reqwest::Client,
        url: &str,
        body: &Value,
        trace: &TraceHeaders,
    ) -> Result<Answer, ApiError> {
        let response = client
            .post(url)
            .headers(trace.headers().clone())
            .json(body)
            .send()
            .await
            .map_err(|err| self.unreachable(&err))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| self.unreachable(&err))?;
        let body = parse_body(&bytes);

        if status.is_success() {
            return if body.is_object() {
                Ok(Answer {
                    upstream: self,
                    status,
                    headers,
                    body,
                })
            } else {
                Err(self.error(
                    StatusCode::BAD_GATEWAY,
                    &format!("{} answered without a JSON object", self.name()),
                    Some(status),
                    body,
                ))
            };
        }
        Err(match status {
            StatusCode::CONFLICT if self == Self::Inventory => self.error(
                StatusCode::CONFLICT,
                "insufficient stock",
                Some(status),
                body,
            ),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => self
                .error(
                    status,
                    &format!("{} unavailable", self.name()),
                    Some(status),
                    body,
                )
                .with_headers(retry_headers(&headers)),
            _ => self.error(
                StatusCode::BAD_GATEWAY,
                &format!("{} failed", self.name()),
                Some(status),
                body,
            ),
        })
    }

    fn unreachable(self, err: &reqwest::Error) -> ApiError {
        let reason = if err.is_timeout() {
            format!("{} timed out", self.name())
        } else {
            format!("{} unreachable: {}", self.name(), error_chain(err))
        };
        self.error(StatusCode::BAD_GATEWAY, &reason, None, Value::Null)
    }

    fn error(
        self,
        status: StatusCode,
        reason: &str,
        upstream_status: Option<StatusCode>,
        upstream_body: Value,
    ) -> ApiError {
        ApiError::new(
            status,
            json!({
                "error": reason,
                "upstream": self.name(),
                "upstream_status": upstream_status.map(|status| status.as_u16()),
                "upstream_body": upstream_body,
            }),
        )
    }
}

/// JSON when the body is JSON, else the text; `null` when empty.
fn parse_body(bytes: &Bytes) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// `retry-after` and every `x-meshwasm-*` header of an upstream answer.
fn retry_headers(headers: &HeaderMap) -> HeaderMap {
    let mut copied = HeaderMap::new();
    for (name, value) in headers {
        if name == RETRY_AFTER || name.as_str().starts_with("x-meshwasm-") {
            copied.append(name.clone(), value.clone());
        }
    }
    copied
}

/// `err` and its sources, joined (reqwest's top-level message alone hides
/// the cause, e.g. "connection refused").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_retry_after_and_meshwasm_headers_only() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        headers.insert("x-meshwasm-breaker", HeaderValue::from_static("open"));
        headers.insert("x-other", HeaderValue::from_static("no"));
        let copied = retry_headers(&headers);
        assert_eq!(copied.len(), 2);
        assert_eq!(copied["retry-after"], "3");
        assert_eq!(copied["x-meshwasm-breaker"], "open");
    }

    #[test]
    fn parses_upstream_bodies() {
        assert_eq!(parse_body(&Bytes::from_static(b"")), Value::Null);
        assert_eq!(
            parse_body(&Bytes::from_static(b"{\"a\":1}")),
            json!({"a": 1})
        );
        assert_eq!(
            parse_body(&Bytes::from_static(b"upstream connect error")),
            json!("upstream connect error")
        );
    }
}
