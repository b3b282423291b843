//! Plugin configuration (JSON, `snake_case`). Every field and its default is
//! documented in the crate README; `validate` adds the range checks serde
//! cannot express, naming the offending field.

use meshwasm_shared::claims;
use meshwasm_shared::config::{validate_all, ConfigError, Validate};
use meshwasm_shared::host_pattern::HostPattern;
use meshwasm_shared::path_pattern::PathPattern;
use serde::{de, Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest window, in calls or buckets, a breaker keeps in shared data.
pub const MAX_WINDOW_SLOTS: u32 = 1000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Tried in order; the first policy whose `match` fits the request applies.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Applies when no policy matches; `null` lets such requests pass untouched.
    #[serde(default = "default_policy")]
    pub default_policy: Option<Policy>,
    /// Most breaker keys kept at once per plugin instance; requests for a new
    /// key beyond this pass through without a breaker (and are counted).
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
    /// A key without requests for this long is dropped (state and slot).
    #[serde(default = "default_idle_expiry", with = "meshwasm_shared::duration")]
    pub idle_expiry: Duration,
    /// Most keys that get their own state gauge (Envoy never deletes a stat).
    #[serde(default = "default_max_gauge_keys")]
    pub max_gauge_keys: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Names the policy in keys, metrics and logs.
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: Match,
    /// Parts joined into the breaker key; requests with equal parts share a breaker.
    #[serde(default = "default_key")]
    pub key: Vec<KeyPart>,
    #[serde(default)]
    pub trip: Trip,
    #[serde(default)]
    pub failure: Failure,
    #[serde(default)]
    pub open: Open,
    #[serde(default)]
    pub half_open: HalfOpen,
    #[serde(default)]
    pub bulkhead: Bulkhead,
    #[serde(default)]
    pub rejection: Rejection,
    /// Sent instead of the problem response when set.
    #[serde(default)]
    pub fallback: Option<Fallback>,
}

/// All given conditions must hold; an empty list matches anything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub paths: Vec<Pattern>,
    #[serde(default)]
    pub methods: Vec<String>,
    /// `:authority` patterns: `payment`, `payment*`, `*.svc.cluster.local`, `*`.
    #[serde(default)]
    pub hosts: Vec<HostPattern>,
}

/// A path pattern parsed while the config is read, so errors carry the field.
#[derive(Debug, Clone)]
pub struct Pattern(pub PathPattern);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PathPattern::parse(&text)
            .map(Pattern)
            .map_err(de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyPart {
    /// The request's `:authority` (the upstream as the caller named it).
    Authority,
    /// Envoy's upstream cluster (`xds.cluster_name`), else the authority.
    Cluster,
    /// The policy's matching path pattern (e.g. `/orders/{id}`), else the path.
    Route,
    /// A request header's value, e.g. a tenant header.
    Header { name: String },
    /// A claim of the token the authz filter verified (`meshwasm.authz.claims`),
    /// by claim path ([`claims`]), e.g. `tenant` or `org.id`.
    Claim { name: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trip {
    /// Open after this many failures in a row; `null` disables.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: Option<u32>,
    /// Open when failures reach this share of the window's calls; `null` disables.
    #[serde(default = "default_failure_rate_percent")]
    pub failure_rate_percent: Option<u8>,
    /// Open when slow calls reach this share of the window's calls; `null` disables.
    #[serde(default)]
    pub slow_call_rate_percent: Option<u8>,
    /// A call whose response headers take longer than this is slow.
    #[serde(
        default = "default_slow_call_duration",
        with = "meshwasm_shared::duration"
    )]
    pub slow_call_duration: Duration,
    /// Rates are only judged once the window holds this many calls.
    #[serde(default = "default_minimum_calls")]
    pub minimum_calls: u32,
    #[serde(default)]
    pub window: Window,
}

impl Default for Trip {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            failure_rate_percent: default_failure_rate_percent(),
            slow_call_rate_percent: None,
            slow_call_duration: default_slow_call_duration(),
            minimum_calls: default_minimum_calls(),
            window: Window::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Window {
    /// The last `size` calls.
    Count { size: u32 },
    /// The calls of the last `duration`, kept in `buckets` equal time slices.
    Time {
        #[serde(with = "meshwasm_shared::duration")]
        duration: Duration,
        #[serde(default = "default_buckets")]
        buckets: u32,
    },
}

impl Default for Window {
    fn default() -> Self {
        Window::Count { size: 20 }
    }
}

/// What counts as a failed call. Any matching rule makes it a failure.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// Every 5xx status.
    #[serde(default = "yes")]
    pub server_errors: bool,
    /// 502, 503 and 504 (useful with `server_errors: false`).
    #[serde(default = "yes")]
    pub gateway_errors: bool,
    /// Further statuses, e.g. `[429]`.
    #[serde(default)]
    pub status_codes: Vec<u16>,
    /// Upstream connect failure, reset, overflow, no healthy host or timeout,
    /// read from Envoy's `response.flags` / `response.code_details`.
    #[serde(default = "yes")]
    pub connection_failures: bool,
}

impl Default for Failure {
    fn default() -> Self {
        Self {
            server_errors: true,
            gateway_errors: true,
            status_codes: Vec::new(),
            connection_failures: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Open {
    /// How long the first trip stays open.
    #[serde(default = "default_open_duration", with = "meshwasm_shared::duration")]
    pub duration: Duration,
    /// Each re-open from HALF_OPEN multiplies the open time by this (1 = constant).
    #[serde(default = "default_backoff_multiplier")]
    pub backoff_multiplier: f64,
    /// Upper bound of the grown open time.
    #[serde(
        default = "default_max_open_duration",
        with = "meshwasm_shared::duration"
    )]
    pub max_duration: Duration,
}

impl Default for Open {
    fn default() -> Self {
        Self {
            duration: default_open_duration(),
            backoff_multiplier: default_backoff_multiplier(),
            max_duration: default_max_open_duration(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HalfOpen {
    /// Probe calls let through after OPEN; all must succeed to close.
    #[serde(default = "default_permitted_calls")]
    pub permitted_calls: u32,
}

impl Default for HalfOpen {
    fn default() -> Self {
        Self {
            permitted_calls: default_permitted_calls(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bulkhead {
    /// Most requests in flight per key (across workers); `null` = unlimited.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    /// Status of the problem response for a rejected request.
    #[serde(default = "default_rejection_status")]
    pub status: u16,
    /// Response header carrying the breaker state on rejections; `""` omits it.
    #[serde(default = "default_state_header")]
    pub state_header: String,
}

impl Default for Rejection {
    fn default() -> Self {
        Self {
            status: default_rejection_status(),
            state_header: default_state_header(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

fn yes() -> bool {
    true
}
fn default_policy() -> Option<Policy> {
    serde_json::from_str("{}").ok()
}
fn default_max_keys() -> u32 {
    1000
}
fn default_idle_expiry() -> Duration {
    Duration::from_secs(600)
}
fn default_max_gauge_keys() -> u32 {
    100
}
fn default_name() -> String {
    "default".to_owned()
}
fn default_key() -> Vec<KeyPart> {
    vec![KeyPart::Authority]
}
fn default_consecutive_failures() -> Option<u32> {
    Some(5)
}
fn default_failure_rate_percent() -> Option<u8> {
    Some(50)
}
fn default_slow_call_duration() -> Duration {
    Duration::from_secs(2)
}
fn default_minimum_calls() -> u32 {
    10
}
fn default_buckets() -> u32 {
    10
}
fn default_open_duration() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_multiplier() -> f64 {
    2.0
}
fn default_max_open_duration() -> Duration {
    Duration::from_secs(300)
}
fn default_permitted_calls() -> u32 {
    3
}
fn default_rejection_status() -> u16 {
    503
}
fn default_state_header() -> String {
    "x-meshwasm-breaker".to_owned()
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn check_percent(field: &str, value: Option<u8>) -> Result<(), ConfigError> {
    match value {
        Some(0) | Some(101..) => Err(ConfigError::new(field, "must be between 1 and 100")),
        _ => Ok(()),
    }
}

fn check_status(field: &str, status: u16) -> Result<(), ConfigError> {
    if (200..=599).contains(&status) {
        Ok(())
    } else {
        Err(ConfigError::new(field, "must be an HTTP status 200..599"))
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_all(&self.policies).map_err(|err| err.within("policies"))?;
        for (index, policy) in self.policies.iter().enumerate() {
            if self
                .policies
                .iter()
                .take(index)
                .any(|p| p.name == policy.name)
            {
                return Err(ConfigError::new(
                    format!("policies[{index}].name"),
                    format!("duplicate policy name `{}`", policy.name),
                ));
            }
        }
        if let Some(policy) = &self.default_policy {
            policy
                .validate()
                .map_err(|err| err.within("default_policy"))?;
            let matcher = &policy.matcher;
            if !(matcher.paths.is_empty() && matcher.methods.is_empty() && matcher.hosts.is_empty())
            {
                return Err(ConfigError::new(
                    "default_policy.match",
                    "the default policy matches everything; remove `match`",
                ));
            }
        }
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        if self.idle_expiry < Duration::from_secs(1) {
            return Err(ConfigError::new("idle_expiry", "must be at least 1s"));
        }
        Ok(())
    }
}

impl Validate for Policy {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() || self.name.contains(['|', ';', '=']) {
            return Err(ConfigError::new(
                "name",
                "must be non-empty without `|`, `;` or `=`",
            ));
        }
        for (index, method) in self.matcher.methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ConfigError::new(
                    format!("match.methods[{index}]"),
                    "must be an upper-case HTTP method",
                ));
            }
        }
        if self.key.is_empty() {
            return Err(ConfigError::new("key", "needs at least one part"));
        }
        for (index, part) in self.key.iter().enumerate() {
            match part {
                KeyPart::Header { name } if !is_header_name(name) => {
                    return Err(ConfigError::new(
                        format!("key[{index}].name"),
                        "must be a lower-case header name",
                    ))
                }
                KeyPart::Claim { name } if !claims::is_path(name) => {
                    return Err(ConfigError::new(
                        format!("key[{index}].name"),
                        "must be a claim name or dotted path",
                    ))
                }
                _ => {}
            }
        }
        self.trip.validate().map_err(|err| err.within("trip"))?;
        self.failure
            .validate()
            .map_err(|err| err.within("failure"))?;
        self.open.validate().map_err(|err| err.within("open"))?;
        if self.half_open.permitted_calls == 0 {
            return Err(ConfigError::new(
                "half_open.permitted_calls",
                "must be at least 1",
            ));
        }
        if self.bulkhead.max_concurrent == Some(0) {
            return Err(ConfigError::new(
                "bulkhead.max_concurrent",
                "must be at least 1 (or null for no limit)",
            ));
        }
        check_status("rejection.status", self.rejection.status)?;
        if !self.rejection.state_header.is_empty() && !is_header_name(&self.rejection.state_header)
        {
            return Err(ConfigError::new(
                "rejection.state_header",
                "must be a lower-case header name or empty",
            ));
        }
        if let Some(fallback) = &self.fallback {
            check_status("fallback.status", fallback.status)?;
            for name in fallback.headers.keys() {
                if !is_header_name(name) {
                    return Err(ConfigError::new(
                        format!("fallback.headers.{name}"),
                        "must be a lower-case header name",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Validate for Trip {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be at least 1 (or null to disable)",
            ));
        }
        check_percent("failure_rate_percent", self.failure_rate_percent)?;
        check_percent("slow_call_rate_percent", self.slow_call_rate_percent)?;
        if self.slow_call_duration.is_zero() {
            return Err(ConfigError::new(
                "slow_call_duration",
                "must be longer than 0",
            ));
        }
        if self.consecutive_failures.is_none()
            && self.failure_rate_percent.is_none()
            && self.slow_call_rate_percent.is_none()
        {
            return Err(ConfigError::new(
                "",
                "enable at least one of consecutive_failures, failure_rate_percent, slow_call_rate_percent",
            ));
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        match &self.window {
            Window::Count { size } => {
                if *size == 0 || *size > MAX_WINDOW_SLOTS {
                    return Err(ConfigError::new(
                        "window.size",
                        format!("must be between 1 and {MAX_WINDOW_SLOTS}"),
                    ));
                }
                if self.minimum_calls > *size {
                    return Err(ConfigError::new(
                        "minimum_calls",
                        "must not exceed window.size (the rate could never be judged)",
                    ));
                }
            }
            Window::Time { duration, buckets } => {
                if *buckets == 0 || *buckets > MAX_WINDOW_SLOTS {
                    return Err(ConfigError::new(
                        "window.buckets",
                        format!("must be between 1 and {MAX_WINDOW_SLOTS}"),
                    ));
                }
                if duration.as_millis() < u128::from(*buckets) {
                    return Err(ConfigError::new(
                        "window.duration",
                        "must give each bucket at least 1ms",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Validate for Failure {
    fn validate(&self) -> Result<(), ConfigError> {
        for (index, code) in self.status_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                return Err(ConfigError::new(
                    format!("status_codes[{index}]"),
                    "must be an HTTP status 100..599",
                ));
            }
        }
        if !self.server_errors
            && !self.gateway_errors
            && !self.connection_failures
            && self.status_codes.is_empty()
        {
            return Err(ConfigError::new("", "nothing would count as a failure"));
        }
        Ok(())
    }
}

impl Validate for Open {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.duration < Duration::from_millis(1) {
            return Err(ConfigError::new("duration", "must be at least 1ms"));
        }
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            return Err(ConfigError::new(
                "backoff_multiplier",
                "must be a number >= 1",
            ));
        }
        if self.max_duration < self.duration {
            return Err(ConfigError::new(
                "max_duration",
                "must not be shorter than `duration`",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwasm_shared::config::parse;

    fn err(json: &str) -> ConfigError {
        parse::<Config>(Some(json.as_bytes())).unwrap_err()
    }

    #[test]
    fn empty_config_gives_a_default_policy_keyed_by_authority() {
        let config: Config = parse(None).unwrap();
        assert!(config.policies.is_empty());
        let policy = config.default_policy.unwrap();
        assert_eq!(policy.name, "default");
        assert_eq!(policy.key, vec![KeyPart::Authority]);
        assert_eq!(policy.trip.consecutive_failures, Some(5));
        assert_eq!(policy.trip.window, Window::Count { size: 20 });
        assert_eq!(policy.open.duration, Duration::from_secs(30));
        assert_eq!(policy.rejection.status, 503);
        assert_eq!(config.max_keys, 1000);
    }

    #[test]
    fn null_default_policy_disables_it() {
        let config: Config = parse(Some(br#"{"default_policy":null}"#)).unwrap();
        assert!(config.default_policy.is_none());
    }

    #[test]
    fn full_policy_parses() {
        let config: Config = parse(Some(
            br#"{"policies":[{"name":"payment",
              "match":{"hosts":["payment*"],"paths":["/charge","/orders/{id}"],"methods":["POST"]},
              "key":[{"source":"authority"},{"source":"route"},{"source":"header","name":"x-tenant"},
                     {"source":"claim","name":"org.id"},{"source":"cluster"}],
              "trip":{"consecutive_failures":null,"failure_rate_percent":40,"slow_call_rate_percent":80,
                      "slow_call_duration":"300ms","minimum_calls":4,
                      "window":{"kind":"time","duration":"10s","buckets":5}},
              "failure":{"server_errors":false,"status_codes":[429]},
              "open":{"duration":"2s","backoff_multiplier":1.5,"max_duration":"20s"},
              "half_open":{"permitted_calls":1},
              "bulkhead":{"max_concurrent":2},
              "rejection":{"status":429,"state_header":""},
              "fallback":{"status":200,"headers":{"content-type":"application/json"},"body":"{}"}}],
              "max_keys":10,"idle_expiry":"1m"}"#,
        ))
        .unwrap();
        let policy = &config.policies[0];
        assert_eq!(policy.key.len(), 5);
        assert_eq!(
            policy.trip.window,
            Window::Time {
                duration: Duration::from_secs(10),
                buckets: 5
            }
        );
        assert_eq!(policy.bulkhead.max_concurrent, Some(2));
        assert_eq!(policy.fallback.as_ref().unwrap().status, 200);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            err(r#"{"policies":[{"name":"a","tirp":{}}]}"#).field,
            "policies[0].tirp"
        );
        assert_eq!(
            err(r#"{"policies":[{"name":"a","match":{"paths":["/a*b"]}}]}"#).field,
            "policies[0].match.paths[0]"
        );
        assert_eq!(
            err(r#"{"policies":[{"name":"a","match":{"hosts":["pay*ment"]}}]}"#).field,
            "policies[0].match.hosts[0]"
        );
        assert_eq!(
            err(r#"{"policies":[{"name":"a","trip":{"window":{"kind":"count","size":0}}}]}"#).field,
            "policies[0].trip.window.size"
        );
        assert_eq!(
            err(r#"{"policies":[{"name":"a","trip":{"failure_rate_percent":101}}]}"#).field,
            "policies[0].trip.failure_rate_percent"
        );
        assert_eq!(
            err(r#"{"policies":[{"name":"a","open":{"backoff_multiplier":0.5}}]}"#).field,
            "policies[0].open.backoff_multiplier"
        );
        assert_eq!(
            err(r#"{"policies":[{"name":"a","open":{"duration":"10m"}}]}"#).field,
            "policies[0].open.max_duration"
        );
        assert_eq!(
            err(r#"{"policies":[{"name":"a","key":[{"source":"header","name":"X-T"}]}]}"#).field,
            "policies[0].key[0].name"
        );
        assert_eq!(
            err(r#"{"policies":[{"name":"a","key":[{"source":"header","nmae":"x"}]}]}"#).field,
            "policies[0].key[0]"
        );
        assert_eq!(
            err(r#"{"policies":[{"name":"a"},{"name":"a"}]}"#).field,
            "policies[1].name"
        );
        assert_eq!(
            err(r#"{"default_policy":{"match":{"hosts":["a"]}}}"#).field,
            "default_policy.match"
        );
        assert_eq!(
            err(r#"{"policies":[{"name":"a","bulkhead":{"max_concurrent":0}}]}"#).field,
            "policies[0].bulkhead.max_concurrent"
        );
        assert_eq!(
            err(r#"{"policies":[{"name":"a","trip":{"consecutive_failures":null,"failure_rate_percent":null}}]}"#)
                .field,
            "policies[0].trip"
        );
        assert_eq!(err(r#"{"max_keys":0}"#).field, "max_keys");
        assert_eq!(err(r#"{"idle_expiry":"5"}"#).field, "idle_expiry");
    }
}
