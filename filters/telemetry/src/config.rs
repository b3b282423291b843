//! Plugin configuration (JSON `pluginConfig`). Every field is optional; the
//! defaults are documented in the crate README and on each field.

use meshwasm_shared::config::{ConfigError, Validate};
use meshwasm_shared::path_pattern::PathPattern;
use serde::Deserialize;

/// Upper bound for `max_label_values`: past this a "bounded" label is not.
pub const MAX_LABEL_VALUES_LIMIT: u32 = 1000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `auto` (default): from the listener direction. Or fixed `inbound` / `outbound`.
    #[serde(default)]
    pub reporter: ReporterSetting,
    /// Route templates, first match wins; the template text is the `route`
    /// label. Unmatched paths are labelled `other`. Default: none.
    #[serde(default)]
    pub routes: Vec<RouteTemplate>,
    /// Where the `tenant` label comes from. Default: none (label `unknown`).
    #[serde(default)]
    pub tenant: Option<TenantSource>,
    /// K: distinct values a peer- or client-controlled label (tenant,
    /// source/destination workload) may take per proxy; the rest become `other`.
    #[serde(default = "default_max_label_values")]
    pub max_label_values: u32,
    /// Requests a value must be seen in (per worker) before it takes one of the
    /// K slots. 1 (default) gives free slots to the first distinct values; once
    /// full, frequent values take the slots of rarely seen ones.
    #[serde(default = "default_admit_after")]
    pub admit_after: u32,
    /// Overrides the workload name read from node metadata. Default: none.
    #[serde(default)]
    pub workload_name: Option<String>,
    /// Exchange workload names with the peer meshwasm sidecar through
    /// `x-meshwasm-source-workload` / `x-meshwasm-workload`. Default: true.
    #[serde(default = "default_true")]
    pub peer_headers: bool,
    #[serde(default)]
    pub trace: TraceConfig,
    #[serde(default)]
    pub access_log: AccessLogConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReporterSetting {
    #[default]
    Auto,
    Inbound,
    Outbound,
}

/// A configured route template, keeping the text as written for the label.
#[derive(Debug, Clone)]
pub struct RouteTemplate {
    pub label: String,
    pub pattern: PathPattern,
}

impl<'de> Deserialize<'de> for RouteTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let label = String::deserialize(deserializer)?;
        let pattern = PathPattern::parse(&label).map_err(serde::de::Error::custom)?;
        Ok(Self { label, pattern })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum TenantSource {
    /// A request header, e.g. `{"header": "x-tenant-id"}`.
    Header(String),
    /// A claim of the token the authz filter verified (filter state
    /// `meshwasm.authz.claims`), by claim path: `{"claim": "org.tenant"}`.
    Claim(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// Read, start and propagate trace context. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Accept B3 (`b3` single header, `x-b3-*` multi headers) when there is no
    /// valid `traceparent`. Default: true.
    #[serde(default = "default_true")]
    pub accept_b3: bool,
    /// Share of newly started traces flagged sampled (0.0..=1.0). Default: 1.0.
    #[serde(default = "default_ratio")]
    pub new_trace_sampling_ratio: f64,
    /// Response header carrying the trace id, e.g. `x-trace-id`. Default: none.
    #[serde(default)]
    pub response_header: Option<String>,
    /// Larger `baggage` headers are removed rather than propagated. Default: 8192
    /// (the W3C Baggage limit).
    #[serde(default = "default_baggage_max_bytes")]
    pub baggage_max_bytes: usize,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            accept_b3: true,
            new_trace_sampling_ratio: 1.0,
            response_header: None,
            baggage_max_bytes: default_baggage_max_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// One JSON line per request at `info`. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Share of requests logged (0.0..=1.0), decided from the trace id so every
    /// hop of a trace makes the same choice. Default: 1.0.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// Log every 5xx (and responses never sent) whatever the sampling. Default: true.
    #[serde(default = "default_true")]
    pub always_log_errors: bool,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_ratio: 1.0,
            always_log_errors: true,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_ratio() -> f64 {
    1.0
}

fn default_max_label_values() -> u32 {
    100
}

fn default_admit_after() -> u32 {
    1
}

fn default_baggage_max_bytes() -> usize {
    8192
}

fn check_ratio(field: &str, ratio: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(ConfigError::new(field, "must be between 0.0 and 1.0"))
    }
}

/// Header names Envoy accepts: lower-case token characters.
fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("`{name}` is not a lower-case header name"),
        ))
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_label_values == 0 || self.max_label_values > MAX_LABEL_VALUES_LIMIT {
            return Err(ConfigError::new(
                "max_label_values",
                format!("must be between 1 and {MAX_LABEL_VALUES_LIMIT}"),
            ));
        }
        if self.admit_after == 0 {
            return Err(ConfigError::new("admit_after", "must be at least 1"));
        }
        for (index, route) in self.routes.iter().enumerate() {
            if route.label == crate::labels::OTHER {
                return Err(ConfigError::new(
                    format!("routes[{index}]"),
                    "`other` is reserved for unmatched paths",
                ));
            }
        }
        if let Some(name) = &self.workload_name {
            if name.is_empty() {
                return Err(ConfigError::new("workload_name", "must not be empty"));
            }
        }
        match &self.tenant {
            Some(TenantSource::Header(name)) => check_header_name("tenant.header", name)?,
            Some(TenantSource::Claim(claim)) if !meshwasm_shared::claims::is_path(claim) => {
                return Err(ConfigError::new(
                    "tenant.claim",
                    format!("`{claim}` is not a claim name (dotted for nesting)"),
                ));
            }
            Some(TenantSource::Claim(_)) | None => {}
        }
        self.trace.validate().map_err(|err| err.within("trace"))?;
        self.access_log
            .validate()
            .map_err(|err| err.within("access_log"))
    }
}

impl Validate for TraceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_ratio("new_trace_sampling_ratio", self.new_trace_sampling_ratio)?;
        if let Some(name) = &self.response_header {
            check_header_name("response_header", name)?;
        }
        if self.baggage_max_bytes == 0 {
            return Err(ConfigError::new("baggage_max_bytes", "must be at least 1"));
        }
        Ok(())
    }
}

impl Validate for AccessLogConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_ratio("sample_ratio", self.sample_ratio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwasm_shared::config::parse;

    fn parse_config(json: &str) -> Result<Config, ConfigError> {
        parse::<Config>(Some(json.as_bytes()))
    }

    #[test]
    fn defaults() {
        let config = parse::<Config>(None).unwrap();
        assert_eq!(config.reporter, ReporterSetting::Auto);
        assert!(config.routes.is_empty());
        assert_eq!(config.tenant, None);
        assert_eq!(config.max_label_values, 100);
        assert_eq!(config.admit_after, 1);
        assert!(config.peer_headers);
        assert!(config.trace.enabled && config.trace.accept_b3);
        assert_eq!(config.trace.new_trace_sampling_ratio, 1.0);
        assert_eq!(config.trace.response_header, None);
        assert_eq!(config.trace.baggage_max_bytes, 8192);
        assert!(config.access_log.enabled && config.access_log.always_log_errors);
        assert_eq!(config.access_log.sample_ratio, 1.0);
    }

    #[test]
    fn full_config() {
        let config = parse_config(
            r#"{"reporter":"inbound","routes":["/orders/{id}","/orders","/static/*"],
                "tenant":{"claim":"org.tenant"},"max_label_values":5,"admit_after":2,
                "workload_name":"order","peer_headers":false,
                "trace":{"enabled":true,"accept_b3":false,"new_trace_sampling_ratio":0.5,
                         "response_header":"x-trace-id","baggage_max_bytes":100},
                "access_log":{"enabled":true,"sample_ratio":0.1,"always_log_errors":false}}"#,
        )
        .unwrap();
        assert_eq!(config.reporter, ReporterSetting::Inbound);
        assert_eq!(config.routes[0].label, "/orders/{id}");
        assert!(config.routes[0].pattern.matches("/orders/7"));
        assert_eq!(
            config.tenant,
            Some(TenantSource::Claim("org.tenant".into()))
        );
        assert_eq!(config.trace.response_header.as_deref(), Some("x-trace-id"));
        assert_eq!(config.access_log.sample_ratio, 0.1);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"routes":["/a","/b/x{id}"]}"#, "routes[1]"),
            (r#"{"routes":["other"]}"#, "routes[0]"),
            (r#"{"reporter":"sideways"}"#, "reporter"),
            (r#"{"max_label_values":0}"#, "max_label_values"),
            (r#"{"max_label_values":5000}"#, "max_label_values"),
            (r#"{"admit_after":0}"#, "admit_after"),
            (r#"{"tenant":{"header":"X Tenant"}}"#, "tenant.header"),
            (r#"{"tenant":{"claim":"a..b"}}"#, "tenant.claim"),
            (r#"{"tenant":{"cookie":"t"}}"#, "tenant"),
            (
                r#"{"trace":{"new_trace_sampling_ratio":1.5}}"#,
                "trace.new_trace_sampling_ratio",
            ),
            (
                r#"{"trace":{"response_header":"X-Trace"}}"#,
                "trace.response_header",
            ),
            (
                r#"{"trace":{"baggage_max_bytes":0}}"#,
                "trace.baggage_max_bytes",
            ),
            (r#"{"trace":{"sampled":true}}"#, "trace.sampled"),
            (
                r#"{"access_log":{"sample_ratio":-0.1}}"#,
                "access_log.sample_ratio",
            ),
            (r#"{"workload_name":""}"#, "workload_name"),
            (r#"{"extra":1}"#, "extra"),
        ];
        for (json, field) in cases {
            let err = parse_config(json).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        }
    }
}
