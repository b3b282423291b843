//! `inventory`: per-SKU stock in memory; every response names the version.
//!
//! - `GET /inventory/{sku}` → `{sku, available, version}`
//! - `POST /reserve` `{sku, quantity, order_id?}` → `{sku, reserved, remaining, version}`,
//!   or 409 when the stock is short.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::env::{self, EnvError};
use crate::extract::JsonBody;
use crate::validate;
use crate::{ApiError, ServiceInfo};

/// Set on every inventory response.
pub const X_INVENTORY_VERSION: HeaderName = HeaderName::from_static("x-inventory-version");

/// Largest quantity one reservation may ask for.
pub const MAX_QUANTITY: i64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryConfig {
    /// Starting stock of every SKU (`STOCK_PER_SKU`, default 1000000).
    pub stock_per_sku: i64,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            stock_per_sku: 1_000_000,
        }
    }
}

impl InventoryConfig {
    pub fn from_env() -> Result<Self, EnvError> {
        let stock_per_sku = env::parse_or("STOCK_PER_SKU", Self::default().stock_per_sku)?;
        if stock_per_sku < 0 {
            return Err(EnvError::new(
                "STOCK_PER_SKU",
                stock_per_sku.to_string(),
                "must not be negative",
            ));
        }
        Ok(Self { stock_per_sku })
    }
}

#[derive(Debug)]
struct Inventory {
    version: String,
    stock_per_sku: i64,
    stock: Mutex<HashMap<String, i64>>,
}

impl Inventory {
    fn available(&self, sku: &str) -> i64 {
        let stock = self.stock.lock().unwrap_or_else(PoisonError::into_inner);
        stock.get(sku).copied().unwrap_or(self.stock_per_sku)
    }
}

#[derive(Debug, Deserialize)]
struct Reserve {
    sku: String,
    quantity: i64,
    #[serde(default)]
    order_id: Option<String>,
}

pub fn router(info: ServiceInfo, config: InventoryConfig) -> Router {
    let inventory = Arc::new(Inventory {
        version: info.version().to_owned(),
        stock_per_sku: config.stock_per_sku,
        stock: Mutex::default(),
    });
    let routes = Router::new()
        .route("/inventory/{sku}", get(show))
        .route("/reserve", post(reserve))
        .with_state(inventory);
    info.finish(routes)
        .layer(middleware::map_response_with_state(
            info.version_header().clone(),
            tag_version,
        ))
}

async fn tag_version(State(version): State<HeaderValue>, mut response: Response) -> Response {
    response.headers_mut().insert(X_INVENTORY_VERSION, version);
    response
}

async fn show(
    State(inventory): State<Arc<Inventory>>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(sku) = sku.map_err(|err| ApiError::bad_request(err.body_text()))?;
    validate::non_empty("sku", &sku)?;
    Ok(Json(json!({
        "sku": sku,
        "available": inventory.available(&sku),
        "version": inventory.version,
    })))
}

async fn reserve(
    State(inventory): State<Arc<Inventory>>,
    JsonBody(request): JsonBody<Reserve>,
) -> Result<Json<Value>, ApiError> {
    validate::non_empty("sku", &request.sku)?;
    validate::in_range("quantity", request.quantity, 1, MAX_QUANTITY)?;
    if let Some(order_id) = &request.order_id {
        validate::non_empty("order_id", order_id)?;
    }

    let mut stock = inventory
        .stock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let available = stock
        .entry(request.sku.clone())
        .or_insert(inventory.stock_per_sku);
    if request.quantity > *available {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            json!({
                "error": "insufficient stock",
                "sku": request.sku,
                "requested": request.quantity,
                "available": *available,
                "version": inventory.version,
            }),
        ));
    }
    *available -= request.quantity;
    Ok(Json(json!({
        "sku": request.sku,
        "reserved": request.quantity,
        "remaining": *available,
        "version": inventory.version,
    })))
}
