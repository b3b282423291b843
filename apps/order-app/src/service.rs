//! What every service shares: identity, `/healthz`, `/metrics`, JSON 404/405,
//! the `x-app-version` header, request counting and the access log.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{InvalidHeaderValue, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::telemetry::{self, AccessLog, Metrics, UNMATCHED_ROUTE};
use crate::trace::TraceHeaders;
use crate::ApiError;

/// Set on every response of every service.
pub const X_APP_VERSION: HeaderName = HeaderName::from_static("x-app-version");

/// One running service: its name, version and telemetry sinks.
#[derive(Debug, Clone)]
pub struct ServiceInfo(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    name: &'static str,
    version: String,
    version_header: HeaderValue,
    metrics: Metrics,
    log: AccessLog,
}

impl ServiceInfo {
    /// Fails when `version` cannot be sent as a header value.
    pub fn new(
        name: &'static str,
        version: &str,
        log: AccessLog,
    ) -> Result<Self, InvalidHeaderValue> {
        Ok(Self(Arc::new(Inner {
            name,
            version: version.to_owned(),
            version_header: HeaderValue::from_str(version)?,
            metrics: Metrics::default(),
            log,
        })))
    }

    pub fn name(&self) -> &'static str {
        self.0.name
    }

    pub fn version(&self) -> &str {
        &self.0.version
    }

    pub fn version_header(&self) -> &HeaderValue {
        &self.0.version_header
    }

    pub fn log(&self) -> &AccessLog {
        &self.0.log
    }

    /// Adds the common routes, JSON fallbacks and the observing middleware
    /// to a service's own routes. Call it last: layers only wrap the routes
    /// that exist when they are added.
    pub fn finish(&self, routes: Router) -> Router {
        let common = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .with_state(self.clone());
        routes
            .merge(common)
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            // `Router::layer` wraps each route after routing, so the
            // middleware sees the `MatchedPath` (route template).
            .layer(middleware::from_fn_with_state(self.clone(), observe))
    }
}

async fn healthz(State(info): State<ServiceInfo>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "service": info.name(), "version": info.version() }))
}

async fn metrics(State(info): State<ServiceInfo>) -> Response {
    let text = info.0.metrics.render(info.name(), info.version());
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::message(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Tags the response with the version, counts it by route template and
/// writes the access-log line.
async fn observe(State(info): State<ServiceInfo>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let trace = TraceHeaders::from_headers(request.headers());

    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(X_APP_VERSION, info.version_header().clone());

    let status = response.status().as_u16();
    info.0
        .metrics
        .record(route.as_deref().unwrap_or(UNMATCHED_ROUTE), status);
    let duration_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    info.log().write(json!({
        "ts": telemetry::timestamp(),
        "service": info.name(),
        "version": info.version(),
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "trace": trace.to_json(),
    }));
    response
}
