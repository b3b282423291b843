//! The plugin configuration (`pluginConfig` of the `WasmPlugin`): providers
//! that verify tokens, authorization rules, and paths that need no token.
//! Field names and defaults are documented in the crate README.

use crate::keys::{KeySet, KeySetError};
use jsonwebtoken::Algorithm;
use meshwasm_shared::config::{validate_all, ConfigError, Validate};
use meshwasm_shared::duration;
use meshwasm_shared::host_pattern::HostPattern;
use meshwasm_shared::path_pattern::PathPattern;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    /// Token issuers; a token is verified by the provider whose `issuer`
    /// equals its `iss` claim.
    #[serde(default)]
    pub providers: Vec<Provider>,
    /// Istio AuthorizationPolicy-style rules: DENY first, then ALLOW.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Paths where a token is optional: no token means an anonymous request
    /// (rules still apply); a token that is present must still be valid.
    #[serde(default)]
    pub public_paths: Vec<PathPattern>,
    /// `realm` of the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Verified tokens kept per worker (and in the cross-worker slots).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

fn default_realm() -> String {
    "meshwasm".to_owned()
}

fn default_cache_entries() -> usize {
    1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Name used in logs and metrics; defaults to the issuer.
    #[serde(default)]
    pub name: Option<String>,
    pub issuer: String,
    /// Accepted `aud` values (any one must be present); empty = not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Algorithm allow-list; a token with any other `alg` is refused.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<AlgorithmName>,
    /// Inline JWKS, as a JSON object or as a string holding one.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Remote JWKS URL, fetched through `jwks_cluster`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Envoy cluster that serves `jwks_uri`.
    #[serde(default)]
    pub jwks_cluster: Option<String>,
    /// How long a fetched key set is used before it is fetched again.
    #[serde(default = "default_jwks_cache_duration", with = "duration")]
    pub jwks_cache_duration: Duration,
    /// Least time between two fetches caused by an unknown `kid` or a failure.
    #[serde(default = "default_jwks_refetch_interval", with = "duration")]
    pub jwks_refetch_interval: Duration,
    /// Timeout of one JWKS fetch.
    #[serde(default = "default_jwks_fetch_timeout", with = "duration")]
    pub jwks_fetch_timeout: Duration,
    /// Headers carrying the token; when no location is configured at all,
    /// `authorization: Bearer <token>`.
    #[serde(default)]
    pub from_headers: Vec<HeaderLocation>,
    /// Query parameters carrying the token.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies carrying the token.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Keep the token in the request sent upstream (default: strip it).
    #[serde(default)]
    pub forward: bool,
    /// Header that receives the verified payload as base64url JSON.
    #[serde(default)]
    pub payload_header: Option<String>,
    /// Claims copied into request headers.
    #[serde(default)]
    pub claims_to_headers: Vec<ClaimToHeader>,
    /// Tolerance for `exp`, `nbf` and `iat`.
    #[serde(default = "default_clock_skew", with = "duration")]
    pub clock_skew: Duration,
    /// Longest accepted `exp - iat` (requires both claims when set).
    #[serde(default, with = "optional_duration")]
    pub max_lifetime: Option<Duration>,
    /// Tokens longer than this are refused before any decoding.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Refuse tokens without `exp`.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// Accepted `typ` header values (case-insensitive); a token without
    /// `typ` is accepted.
    #[serde(default = "default_types")]
    pub allowed_types: Vec<String>,
}

fn default_algorithms() -> Vec<AlgorithmName> {
    vec![AlgorithmName(Algorithm::RS256)]
}
fn default_jwks_cache_duration() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_refetch_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_true() -> bool {
    true
}
fn default_types() -> Vec<String> {
    vec!["JWT".to_owned(), "at+jwt".to_owned()]
}

/// `Option<Duration>` written like the other durations (`"1h"`).
mod optional_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| meshwasm_shared::duration::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A JWS algorithm name from the allow-list (`RS256`, `ES256`, `EdDSA`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlgorithmName(pub Algorithm);

impl<'de> Deserialize<'de> for AlgorithmName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse::<Algorithm>().map(AlgorithmName).map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown algorithm `{name}` (use RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512)"
            ))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderLocation {
    pub name: String,
    /// Text before the token (`"Bearer "`); compared case-insensitively.
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Dotted claim path (`realm.roles`).
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Action {
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
}

/// One rule. Every condition that is set must hold (AND); the values of one
/// condition are alternatives (OR); a `not_*` condition holds when none of
/// its values match. A rule without conditions matches every request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    /// Only count and log what the rule would have done.
    #[serde(default)]
    pub dry_run: bool,
    /// [`HostPattern`]s of the `:authority`.
    #[serde(default)]
    pub hosts: Vec<HostPattern>,
    #[serde(default)]
    pub not_hosts: Vec<HostPattern>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<PathPattern>,
    #[serde(default)]
    pub not_paths: Vec<PathPattern>,
    #[serde(default)]
    pub headers: Vec<HeaderCondition>,
    /// The mTLS peer's identity without `spiffe://` (`cluster.local/ns/<ns>/sa/<sa>`),
    /// like Istio's `source.principals`; `*` = any mTLS peer.
    #[serde(default)]
    pub principals: Vec<StringMatch>,
    #[serde(default)]
    pub not_principals: Vec<StringMatch>,
    /// `iss/sub` of the verified token; `*` = any authenticated request.
    #[serde(default)]
    pub request_principals: Vec<StringMatch>,
    #[serde(default)]
    pub not_request_principals: Vec<StringMatch>,
    #[serde(default)]
    pub claims: Vec<ClaimCondition>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderCondition {
    pub name: String,
    /// Istio string matches; empty = the header must be present.
    #[serde(default)]
    pub values: Vec<StringMatch>,
}

/// Exactly one of `equals`, `one_of`, `contains`, `present`, `absent`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimCondition {
    /// Dotted path (`realm.roles`); a top-level key containing dots is found too.
    pub claim: String,
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    #[serde(default)]
    pub one_of: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub contains: Option<serde_json::Value>,
    #[serde(default)]
    pub present: Option<bool>,
    #[serde(default)]
    pub absent: Option<bool>,
}

/// Istio-style string match: `exact`, `prefix*`, `*suffix`, or `*` (present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl StringMatch {
    pub fn parse(text: &str) -> Self {
        if text == "*" {
            Self::Any
        } else if let Some(prefix) = text.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else if let Some(suffix) = text.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else {
            Self::Exact(text.to_owned())
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => value == exact,
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Self::Suffix(suffix) => value.ends_with(suffix.as_str()),
        }
    }
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        // `*` anywhere but the first or last character.
        let mut inner = text.chars();
        inner.next();
        inner.next_back();
        if inner.as_str().contains('*') {
            return Err(serde::de::Error::custom(format!(
                "`{text}`: `*` may only start or end a value"
            )));
        }
        Ok(Self::parse(&text))
    }
}

impl Provider {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.issuer)
    }

    /// Where this provider looks for tokens (the default when none is set).
    pub fn header_locations(&self) -> Vec<HeaderLocation> {
        if self.from_headers.is_empty()
            && self.from_params.is_empty()
            && self.from_cookies.is_empty()
        {
            vec![HeaderLocation {
                name: "authorization".to_owned(),
                prefix: "Bearer ".to_owned(),
            }]
        } else {
            self.from_headers.clone()
        }
    }

    /// The inline key set (validated at configure time).
    pub fn inline_keys(&self) -> Result<Option<KeySet>, KeySetError> {
        let Some(jwks) = &self.jwks else {
            return Ok(None);
        };
        let text = match jwks {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        KeySet::parse(text.as_bytes(), &self.allowed_algorithms()).map(Some)
    }

    pub fn allowed_algorithms(&self) -> Vec<Algorithm> {
        self.algorithms.iter().map(|name| name.0).collect()
    }

    pub fn is_remote(&self) -> bool {
        self.jwks_uri.is_some()
    }
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(':')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
}

fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if valid_header_name(name) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("`{name}` is not a valid request header name"),
        ))
    }
}

impl Validate for Provider {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.issuer.trim().is_empty() {
            return Err(ConfigError::new("issuer", "must not be empty"));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::new(
                "algorithms",
                "must list at least one algorithm",
            ));
        }
        if self.jwks.is_none() && self.jwks_uri.is_none() {
            return Err(ConfigError::new("jwks", "set `jwks` and/or `jwks_uri`"));
        }
        match self.inline_keys() {
            Err(err) => return Err(ConfigError::new(err.field("jwks"), err.message)),
            Ok(Some(keys)) if !self.is_remote() => {
                for (index, name) in self.algorithms.iter().enumerate() {
                    if !keys.has_key_for(name.0) {
                        return Err(ConfigError::new(
                            format!("algorithms[{index}]"),
                            format!("no key in `jwks` can verify {:?}", name.0),
                        ));
                    }
                }
            }
            Ok(_) => {}
        }
        if let Some(uri) = &self.jwks_uri {
            if split_uri(uri).is_none() {
                return Err(ConfigError::new(
                    "jwks_uri",
                    format!("`{uri}` must be an absolute http(s) URL"),
                ));
            }
            match &self.jwks_cluster {
                Some(cluster) if !cluster.trim().is_empty() => {}
                _ => {
                    return Err(ConfigError::new(
                        "jwks_cluster",
                        "required with `jwks_uri`: the Envoy cluster that serves it",
                    ))
                }
            }
        } else if self.jwks_cluster.is_some() {
            return Err(ConfigError::new(
                "jwks_cluster",
                "only allowed with `jwks_uri`",
            ));
        }
        for (field, value) in [
            ("jwks_cache_duration", self.jwks_cache_duration),
            ("jwks_refetch_interval", self.jwks_refetch_interval),
            ("jwks_fetch_timeout", self.jwks_fetch_timeout),
        ] {
            if value < Duration::from_secs(1) {
                return Err(ConfigError::new(field, "must be at least 1s"));
            }
        }
        if self.max_token_bytes < 64 || self.max_token_bytes > 65536 {
            return Err(ConfigError::new(
                "max_token_bytes",
                "must be between 64 and 65536",
            ));
        }
        if self.max_lifetime == Some(Duration::ZERO) {
            return Err(ConfigError::new("max_lifetime", "must be longer than 0s"));
        }
        for (index, location) in self.from_headers.iter().enumerate() {
            check_header_name(&format!("from_headers[{index}].name"), &location.name)?;
        }
        for (index, name) in self.from_params.iter().enumerate() {
            if name.is_empty() || name.contains(['&', '=', '?', '#']) {
                return Err(ConfigError::new(
                    format!("from_params[{index}]"),
                    format!("`{name}` is not a valid query parameter name"),
                ));
            }
        }
        for (index, name) in self.from_cookies.iter().enumerate() {
            if name.is_empty() || name.contains([';', '=', ' ']) {
                return Err(ConfigError::new(
                    format!("from_cookies[{index}]"),
                    format!("`{name}` is not a valid cookie name"),
                ));
            }
        }
        if let Some(header) = &self.payload_header {
            check_header_name("payload_header", header)?;
        }
        for (index, mapping) in self.claims_to_headers.iter().enumerate() {
            let field = format!("claims_to_headers[{index}]");
            if !meshwasm_shared::claims::is_path(&mapping.claim) {
                return Err(ConfigError::new(
                    format!("{field}.claim"),
                    "must be a dotted claim path like `realm.roles`",
                ));
            }
            check_header_name(&format!("{field}.header"), &mapping.header)?;
        }
        Ok(())
    }
}

/// `(authority, path)` of an absolute http(s) URL.
pub fn split_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(index) => rest.split_at(index),
        None => (rest, "/"),
    };
    (!authority.is_empty()).then_some((authority, path))
}

impl Validate for Rule {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        for (field, methods) in [
            ("methods", &self.methods),
            ("not_methods", &self.not_methods),
        ] {
            for (index, method) in methods.iter().enumerate() {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(ConfigError::new(
                        format!("{field}[{index}]"),
                        format!("`{method}` must be an upper-case HTTP method"),
                    ));
                }
            }
        }
        for (index, header) in self.headers.iter().enumerate() {
            check_header_name(&format!("headers[{index}].name"), &header.name)?;
        }
        validate_all(&self.claims).map_err(|err| err.within("claims"))
    }
}

impl Validate for ClaimCondition {
    fn validate(&self) -> Result<(), ConfigError> {
        if !meshwasm_shared::claims::is_path(&self.claim) {
            return Err(ConfigError::new(
                "claim",
                "must be a dotted claim path like `realm.roles`",
            ));
        }
        let set = [
            self.equals.is_some(),
            self.one_of.is_some(),
            self.contains.is_some(),
            self.present.is_some(),
            self.absent.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if set != 1 {
            return Err(ConfigError::new(
                "",
                "set exactly one of `equals`, `one_of`, `contains`, `present`, `absent`",
            ));
        }
        if self.present == Some(false) || self.absent == Some(false) {
            return Err(ConfigError::new(
                if self.present.is_some() {
                    "present"
                } else {
                    "absent"
                },
                "only `true` is meaningful (use the other one)",
            ));
        }
        for (field, value) in [("equals", &self.equals), ("contains", &self.contains)] {
            if let Some(value) = value {
                if value.is_object() || value.is_array() || value.is_null() {
                    return Err(ConfigError::new(
                        field,
                        "must be a string, number or boolean",
                    ));
                }
            }
        }
        if let Some(values) = &self.one_of {
            if values.is_empty() {
                return Err(ConfigError::new("one_of", "must list at least one value"));
            }
        }
        Ok(())
    }
}

impl Validate for AuthzConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_all(&self.providers).map_err(|err| err.within("providers"))?;
        for (index, provider) in self.providers.iter().enumerate() {
            let duplicate = self
                .providers
                .iter()
                .take(index)
                .any(|other| other.issuer == provider.issuer);
            if duplicate {
                return Err(ConfigError::new(
                    format!("providers[{index}].issuer"),
                    format!("issuer `{}` is configured twice", provider.issuer),
                ));
            }
        }
        validate_all(&self.rules).map_err(|err| err.within("rules"))?;
        for (index, rule) in self.rules.iter().enumerate() {
            if self
                .rules
                .iter()
                .take(index)
                .any(|other| other.name == rule.name)
            {
                return Err(ConfigError::new(
                    format!("rules[{index}].name"),
                    format!("rule name `{}` is used twice", rule.name),
                ));
            }
        }
        if self.cache_entries > 100_000 {
            return Err(ConfigError::new("cache_entries", "must be at most 100000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwasm_shared::config::parse;

    pub const DEMO_JWKS: &str = include_str!("../../../integration/demo-keys/demo-jwks.json");

    fn provider_json(extra: &str) -> String {
        format!(
            r#"{{"providers":[{{"issuer":"https://auth.meshwasm.local","jwks":{DEMO_JWKS}{extra}}}]}}"#
        )
    }

    fn err(raw: &str) -> ConfigError {
        parse::<AuthzConfig>(Some(raw.as_bytes())).unwrap_err()
    }

    #[test]
    fn defaults_apply() {
        let config: AuthzConfig = parse(Some(provider_json("").as_bytes())).unwrap();
        let provider = &config.providers[0];
        assert_eq!(provider.algorithms, vec![AlgorithmName(Algorithm::RS256)]);
        assert_eq!(provider.clock_skew, Duration::from_secs(60));
        assert_eq!(provider.max_token_bytes, 8192);
        assert!(provider.require_exp);
        assert!(!provider.forward);
        assert_eq!(provider.jwks_cache_duration, Duration::from_secs(300));
        assert_eq!(provider.header_locations()[0].name, "authorization");
        assert_eq!(config.realm, "meshwasm");
        assert!(parse::<AuthzConfig>(None).is_ok());
    }

    #[test]
    fn unknown_fields_are_named() {
        assert_eq!(
            err(&provider_json(r#","forwrd":true"#)).field,
            "providers[0].forwrd"
        );
        assert_eq!(
            err(r#"{"rules":[{"name":"a","action":"ALLOW","pathz":["/"]}]}"#).field,
            "rules[0].pathz"
        );
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            err(&provider_json(r#","algorithms":["none"]"#)).field,
            "providers[0].algorithms[0]"
        );
        assert_eq!(
            err(&provider_json(r#","clock_skew":"60"#)).field,
            "providers[0].clock_skew"
        );
        assert_eq!(
            err(&provider_json(r#","max_token_bytes":10"#)).field,
            "providers[0].max_token_bytes"
        );
        assert_eq!(
            err(&provider_json(r#","jwks_uri":"http://jwks/keys""#)).field,
            "providers[0].jwks_cluster"
        );
        assert_eq!(
            err(&provider_json(
                r#","jwks_uri":"jwks/keys","jwks_cluster":"c""#
            ))
            .field,
            "providers[0].jwks_uri"
        );
        assert_eq!(
            err(&provider_json(
                r#","claims_to_headers":[{"claim":"a..b","header":"x"}]"#
            ))
            .field,
            "providers[0].claims_to_headers[0].claim"
        );
        assert_eq!(
            err(&provider_json(r#","payload_header":"bad header""#)).field,
            "providers[0].payload_header"
        );
        assert_eq!(
            err(r#"{"rules":[{"name":"a","action":"ALLOW","paths":["/a*b"]}]}"#).field,
            "rules[0].paths[0]"
        );
        assert_eq!(
            err(r#"{"rules":[{"name":"a","action":"PERMIT"}]}"#).field,
            "rules[0].action"
        );
        assert_eq!(
            err(r#"{"rules":[{"name":"a","action":"ALLOW","methods":["get"]}]}"#).field,
            "rules[0].methods[0]"
        );
        assert_eq!(
            err(r#"{"rules":[{"name":"a","action":"ALLOW"},{"name":"a","action":"DENY"}]}"#).field,
            "rules[1].name"
        );
    }

    #[test]
    fn claim_conditions_need_exactly_one_test() {
        let base = r#"{"rules":[{"name":"a","action":"ALLOW","claims":[CLAIM]}]}"#;
        let bad = [
            (r#"{"claim":"groups"}"#, "rules[0].claims[0]"),
            (
                r#"{"claim":"groups","equals":"a","present":true}"#,
                "rules[0].claims[0]",
            ),
            (
                r#"{"claim":"groups","present":false}"#,
                "rules[0].claims[0].present",
            ),
            (
                r#"{"claim":"groups","one_of":[]}"#,
                "rules[0].claims[0].one_of",
            ),
            (
                r#"{"claim":"groups","equals":{"a":1}}"#,
                "rules[0].claims[0].equals",
            ),
            (
                r#"{"claim":".groups","absent":true}"#,
                "rules[0].claims[0].claim",
            ),
        ];
        for (claim, field) in bad {
            assert_eq!(err(&base.replace("CLAIM", claim)).field, field, "{claim}");
        }
        let good = base.replace("CLAIM", r#"{"claim":"realm.roles","contains":"admin"}"#);
        assert!(parse::<AuthzConfig>(Some(good.as_bytes())).is_ok());
    }

    #[test]
    fn bad_jwks_is_refused_at_configure() {
        let bad_jwks = r#"{"providers":[{"issuer":"i","jwks":{"keys":[{"kty":"RSA","kid":"k","n":"!!","e":"AQAB"}]}}]}"#;
        let error = err(bad_jwks);
        assert_eq!(error.field, "providers[0].jwks.keys[0]");
        let not_json = r#"{"providers":[{"issuer":"i","jwks":"{nope"}]}"#;
        assert_eq!(err(not_json).field, "providers[0].jwks");
        let no_keys = r#"{"providers":[{"issuer":"i"}]}"#;
        assert_eq!(err(no_keys).field, "providers[0].jwks");
    }

    #[test]
    fn algorithm_must_fit_a_key() {
        // The demo JWKS holds one RSA key; an ES256-only provider can use none of it.
        let error = err(&provider_json(r#","algorithms":["ES256"]"#));
        assert_eq!(error.field, "providers[0].jwks.keys[0]");
        assert!(error.message.contains("ES256"), "{error}");
        // HS256 with an RSA key is the classic confusion: refused.
        let error = err(&provider_json(r#","algorithms":["RS256","HS256"]"#));
        assert_eq!(error.field, "providers[0].algorithms[1]");
        assert!(error.message.contains("HS256"), "{error}");
    }

    #[test]
    fn string_matches() {
        assert!(StringMatch::parse("*").matches("x"));
        assert!(StringMatch::parse("a*").matches("ab"));
        assert!(StringMatch::parse("*b").matches("ab"));
        assert!(!StringMatch::parse("a").matches("ab"));
        assert!(
            err(r#"{"rules":[{"name":"a","action":"ALLOW","hosts":["a*b*"]}]}"#).field
                == "rules[0].hosts[0]"
        );
    }

    #[test]
    fn multibyte_string_matches_parse() {
        let parse = |value: &str| {
            let raw = format!(
                r#"{{"rules":[{{"name":"a","action":"ALLOW","request_principals":["{value}"]}}]}}"#
            );
            meshwasm_shared::config::parse::<AuthzConfig>(Some(raw.as_bytes()))
        };
        for ok in ["é", "café", "*é", "é*", "*"] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in ["é*é", "é*é*", "*é*é"] {
            let field = parse(bad).unwrap_err().field;
            assert_eq!(field, "rules[0].request_principals[0]", "{bad}");
        }
    }
}
