//! `payment`: charges, with fault knobs for circuit-breaker demos.
//!
//! - `POST /charge` `{order_id, user, amount}` → `{charge_id, status: "charged"}`;
//!   waits `latency_ms`, then fails with 503 `{"error": "injected fault"}`
//!   with probability `error_rate`.
//! - `GET /faults` → `{error_rate, latency_ms}`; `POST /faults` sets either or
//!   both (start values: `FAULT_ERROR_RATE`, `FAULT_LATENCY_MS`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::env::{self, EnvError};
use crate::extract::JsonBody;
use crate::validate;
use crate::{ApiError, ServiceInfo};

/// Largest settable added latency (one minute).
pub const MAX_LATENCY_MS: u64 = 60_000;

/// Injected faults of `/charge`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Faults {
    /// Probability in `0.0..=1.0` that a charge fails with 503.
    pub error_rate: f64,
    /// Delay added before every charge is answered.
    pub latency_ms: u64,
}

impl Faults {
    /// The start values from `FAULT_ERROR_RATE` and `FAULT_LATENCY_MS`.
    pub fn from_env() -> Result<Self, EnvError> {
        let error_rate: f64 = env::parse_or("FAULT_ERROR_RATE", 0.0)?;
        check_error_rate(error_rate)
            .map_err(|reason| EnvError::new("FAULT_ERROR_RATE", error_rate.to_string(), reason))?;
        let latency_ms: u64 = env::parse_or("FAULT_LATENCY_MS", 0)?;
        check_latency(latency_ms)
            .map_err(|reason| EnvError::new("FAULT_LATENCY_MS", latency_ms.to_string(), reason))?;
        Ok(Self {
            error_rate,
            latency_ms,
        })
    }
}

fn check_error_rate(rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("must be a number between 0.0 and 1.0, got {rate}"))
    }
}

fn check_latency(latency_ms: u64) -> Result<(), String> {
    if latency_ms <= MAX_LATENCY_MS {
        Ok(())
    } else {
        Err(format!(
            "must be an integer between 0 and {MAX_LATENCY_MS}, got {latency_ms}"
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsUpdate {
    error_rate: Option<f64>,
    latency_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Charge {
    order_id: String,
    user: String,
    amount: i64,
}

#[derive(Debug)]
struct Payment {
    faults: Mutex<Faults>,
}

impl Payment {
    fn faults(&self) -> Faults {
        *self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub fn router(info: ServiceInfo, faults: Faults) -> Router {
    let payment = Arc::new(Payment {
        faults: Mutex::new(faults),
    });
    let routes = Router::new()
        .route("/charge", post(charge))
        .route("/faults", get(show_faults).post(set_faults))
        .with_state(payment);
    info.finish(routes)
}

async fn charge(
    State(payment): State<Arc<Payment>>,
    JsonBody(request): JsonBody<Charge>,
) -> Result<Json<Value>, ApiError> {
    validate::non_empty("order_id", &request.order_id)?;
    validate::non_empty("user", &request.user)?;
    validate::in_range("amount", request.amount, 1, i64::MAX)?;

    let faults = payment.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if fastrand::f64() < faults.error_rate {
        return Err(ApiError::message(
            StatusCode::SERVICE_UNAVAILABLE,
            "injected fault",
        ));
    }
    Ok(Json(json!({
        "charge_id": format!("ch-{}", uuid::Uuid::new_v4()),
        "status": "charged",
    })))
}

async fn show_faults(State(payment): State<Arc<Payment>>) -> Json<Faults> {
    Json(payment.faults())
}

async fn set_faults(
    State(payment): State<Arc<Payment>>,
    JsonBody(update): JsonBody<FaultsUpdate>,
) -> Result<Json<Faults>, ApiError> {
    if update.error_rate.is_none() && update.latency_ms.is_none() {
        return Err(ApiError::bad_request(
            "expected at least one of `error_rate`, `latency_ms`",
        ));
    }
    if let Some(rate) = update.error_rate {
        check_error_rate(rate)
            .map_err(|reason| ApiError::bad_request(format!("`error_rate` {reason}")))?;
    }
    let latency_ms = update
        .latency_ms
        .map(|latency| {
            u64::try_from(latency)
                .map_err(|_| {
                    format!("must be an integer between 0 and {MAX_LATENCY_MS}, got {latency}")
                })
                .and_then(|latency| check_latency(latency).map(|()| latency))
                .map_err(|reason| ApiError::bad_request(format!("`latency_ms` {reason}")))
        })
        .transpose()?;

    let mut faults = payment
        .faults
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(rate) = update.error_rate {
        faults.error_rate = rate;
    }
    if let Some(latency_ms) = latency_ms {
        faults.latency_ms = latency_ms;
    }
    Ok(Json(*faults))
}
