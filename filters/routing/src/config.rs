//! Plugin configuration (JSON, `snake_case`, unknown fields refused). Every
//! field and its default is documented in the crate README.

use crate::baggage::is_token;
use crate::hash::BUCKETS;
use crate::matcher::{NamedMatch, Pattern};
use meshwasm_shared::claims;
use meshwasm_shared::config::{ConfigError, Validate};
use meshwasm_shared::host_pattern::HostPattern;
use meshwasm_shared::path_pattern::PathPattern;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

pub const DEFAULT_LANE_HEADER: &str = "x-meshwasm-lane";
pub const DEFAULT_LANE_BAGGAGE_KEY: &str = "meshwasm-lane";
const MAX_LANE_LEN: usize = 64;
const CLAIM_PATH_EXPECTED: &str = "must be a claim name or dotted path";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Headers stripped from every incoming request before the rules run.
    /// The lane header and every header a rule sets are always added.
    #[serde(default)]
    pub owned_headers: Vec<String>,
    #[serde(default)]
    pub lane: LaneConfig,
    /// Where verified JWT claims come from.
    #[serde(default)]
    pub claims: ClaimsSource,
    /// Response header naming the rule and lane (`rule=<r>; lane=<l>`); off when absent.
    #[serde(default)]
    pub debug_header: Option<String>,
    /// Evaluated in order; the first match applies.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    /// Request header carrying the lane for the VirtualService to match.
    #[serde(default = "default_lane_header")]
    pub header: String,
    /// Baggage member carrying the lane to later hops.
    #[serde(default = "default_lane_baggage_key")]
    pub baggage_key: String,
    /// Write the chosen lane into `baggage`.
    #[serde(default = "default_true")]
    pub propagate: bool,
    /// Take the lane from an incoming baggage member when no rule sets one.
    /// At the mesh edge set this to false: the member is then removed from
    /// the incoming request, so clients cannot pick their own lane.
    #[serde(default = "default_true")]
    pub accept_baggage: bool,
    /// Lanes that may be used; empty = any lane-shaped value. Incoming
    /// baggage lanes outside the list are ignored.
    #[serde(default)]
    pub allowed: Vec<String>,
}

impl Default for LaneConfig {
    fn default() -> Self {
        Self {
            header: default_lane_header(),
            baggage_key: default_lane_baggage_key(),
            propagate: true,
            accept_baggage: true,
            allowed: Vec::new(),
        }
    }
}

/// `{"filter_state": "meshwasm.authz.claims"}` (default) or
/// `{"header": "x-meshwasm-claims"}` (a header the authz filter owns: it
/// strips it from incoming requests and writes the verified payload JSON).
/// Tokens are never decoded here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ClaimsSource {
    FilterState(String),
    Header(String),
}

impl Default for ClaimsSource {
    fn default() -> Self {
        Self::FilterState(meshwasm_shared::filter_state::AUTHZ_CLAIMS.to_owned())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: Match,
    #[serde(default)]
    pub action: Action,
}

/// All listed conditions must hold; an empty match matches every request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// `/exact`, `/prefix*`, `*suffix`, `*`, `/orders/{id}`, `/files/{**}`.
    #[serde(default)]
    pub path: Option<PathPattern>,
    /// Regex on the path (without query string).
    #[serde(default)]
    pub path_regex: Option<Pattern>,
    /// Any of these methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Any of these host patterns.
    #[serde(default)]
    pub hosts: Vec<HostPattern>,
    #[serde(default)]
    pub headers: Vec<NamedMatch>,
    #[serde(default)]
    pub query_params: Vec<NamedMatch>,
    #[serde(default)]
    pub cookies: Vec<NamedMatch>,
    /// Verified claims; `name` is a top-level claim or a dotted path.
    #[serde(default)]
    pub claims: Vec<NamedMatch>,
    /// W3C baggage members (decoded values).
    #[serde(default)]
    pub baggage: Vec<NamedMatch>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub remove_headers: Vec<String>,
    #[serde(default)]
    pub path_rewrite: Option<PathRewrite>,
    /// New `:authority`.
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub lane: Option<String>,
    #[serde(default)]
    pub split: Option<Split>,
    /// The rule applies only to this share of users; the others fall
    /// through to the next rule.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    #[serde(default)]
    pub redirect: Option<Redirect>,
    #[serde(default)]
    pub direct_response: Option<DirectResponse>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathRewrite {
    /// Replace a leading `from` with `to`.
    Prefix { from: String, to: String },
    /// Replace every match of `pattern` with `substitution` (`$1`, `${name}`).
    Regex {
        pattern: Pattern,
        substitution: String,
    },
}

/// Where the sticky key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StickyKey {
    Header(String),
    Cookie(String),
    Claim(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub key: StickyKey,
    /// Hash seed; default: the rule name. Change it to reshuffle users.
    #[serde(default)]
    pub seed: Option<String>,
    pub variants: Vec<Variant>,
    /// Variant for requests without the key; default: a per-request bucket
    /// from `x-request-id` (not sticky).
    #[serde(default)]
    pub missing_key_variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Default: the lane.
    #[serde(default)]
    pub name: Option<String>,
    /// Percent of users, 0–100 in steps of 0.01; all weights sum to 100.
    pub weight: f64,
    #[serde(default)]
    pub lane: Option<String>,
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
}

impl Variant {
    pub fn label(&self) -> &str {
        self.name.as_deref().or(self.lane.as_deref()).unwrap_or("")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub key: StickyKey,
    /// Percent of users, 0–100 in steps of 0.01. Requests without the key
    /// are outside the rollout.
    pub percent: f64,
    #[serde(default)]
    pub seed: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// Replaces the whole path.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_rewrite: Option<PathRewrite>,
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    #[serde(default)]
    pub strip_query: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_lane_header() -> String {
    DEFAULT_LANE_HEADER.to_owned()
}
fn default_lane_baggage_key() -> String {
    DEFAULT_LANE_BAGGAGE_KEY.to_owned()
}
fn default_true() -> bool {
    true
}
fn default_redirect_status() -> u16 {
    302
}
fn default_content_type() -> String {
    "text/plain; charset=utf-8".to_owned()
}

/// A request header name that a rule may set or remove.
fn check_header_name(name: &str) -> Result<(), String> {
    if name.starts_with(':') {
        return Err(format!(
            "`{name}`: pseudo-headers are changed with `path_rewrite` and `authority`"
        ));
    }
    if !is_token(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("`{name}` is not a lower-case header name"));
    }
    Ok(())
}

fn check_header_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err("header values cannot contain CR, LF or NUL".to_owned());
    }
    Ok(())
}

fn check_headers(field: &str, headers: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, value) in headers {
        check_header_name(name)
            .and_then(|()| check_header_value(value))
            .map_err(|msg| ConfigError::new(format!("{field}.{name}"), msg))?;
    }
    Ok(())
}

/// Lane values go into a header and a metric label: short tokens only.
pub fn is_lane_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LANE_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_percent(percent: f64) -> Result<(), String> {
    let buckets = percent * f64::from(BUCKETS) / 100.0;
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("{percent} is not between 0 and 100"));
    }
    if (buckets - buckets.round()).abs() > 1e-6 {
        return Err(format!("{percent} is finer than 0.01 %"));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "`{path}` must start with `/` and contain no spaces"
        ));
    }
    Ok(())
}

impl Config {
    /// Owned headers: configured ones, the lane header and every header a
    /// rule sets, lower-cased and de-duplicated.
    pub fn effective_owned_headers(&self) -> Vec<String> {
        let mut owned: BTreeSet<String> = self
            .owned_headers
            .iter()
            .map(|name| name.to_ascii_lowercase())
            .collect();
        owned.insert(self.lane.header.clone());
        for rule in &self.rules {
            owned.extend(rule.action.set_headers.keys().cloned());
            if let Some(split) = &rule.action.split {
                for variant in &split.variants {
                    owned.extend(variant.set_headers.keys().cloned());
                }
            }
        }
        owned.into_iter().collect()
    }

    fn check_lane(&self, lane: &str) -> Result<(), String> {
        if !is_lane_value(lane) {
            return Err(format!(
                "lane `{lane}` must be 1–{MAX_LANE_LEN} characters of [A-Za-z0-9._-]"
            ));
        }
        if !self.lane.allowed.is_empty() && !self.lane.allowed.iter().any(|a| a == lane) {
            return Err(format!("lane `{lane}` is not in `lane.allowed`"));
        }
        Ok(())
    }

    fn validate_rule(&self, rule: &Rule) -> Result<(), ConfigError> {
        if rule.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        rule.matches.validate().map_err(|e| e.within("match"))?;
        self.validate_action(&rule.action)
            .map_err(|e| e.within("action"))
    }

    fn validate_action(&self, action: &Action) -> Result<(), ConfigError> {
        check_headers("set_headers", &action.set_headers)?;
        for (index, name) in action.remove_headers.iter().enumerate() {
            check_header_name(name)
                .map_err(|msg| ConfigError::new(format!("remove_headers[{index}]"), msg))?;
        }
        if let Some(rewrite) = &action.path_rewrite {
            rewrite.validate().map_err(|e| e.within("path_rewrite"))?;
        }
        if let Some(authority) = &action.authority {
            if authority.is_empty() || authority.contains(['/', ' ', '\r', '\n']) {
                return Err(ConfigError::new("authority", "must be a host[:port]"));
            }
        }
        if let Some(lane) = &action.lane {
            self.check_lane(lane)
                .map_err(|msg| ConfigError::new("lane", msg))?;
        }
        if let Some(split) = &action.split {
            self.validate_split(split).map_err(|e| e.within("split"))?;
        }
        if let Some(rollout) = &action.rollout {
            rollout
                .key
                .validate()
                .map_err(|e| e.within("rollout.key"))?;
            check_percent(rollout.percent)
                .map_err(|msg| ConfigError::new("rollout.percent", msg))?;
        }
        let terminal = [
            ("redirect", action.redirect.is_some()),
            ("direct_response", action.direct_response.is_some()),
        ];
        if let Some((terminal_name, _)) = terminal.iter().find(|(_, set)| *set) {
            let forwarding = !action.set_headers.is_empty()
                || !action.remove_headers.is_empty()
                || action.path_rewrite.is_some()
                || action.authority.is_some()
                || action.lane.is_some()
                || action.split.is_some()
                || terminal.iter().filter(|(_, set)| *set).count() > 1;
            if forwarding {
                return Err(ConfigError::new(
                    *terminal_name,
                    "answers the request itself and cannot be combined with other actions except `rollout`",
                ));
            }
        }
        if let Some(redirect) = &action.redirect {
            redirect.validate().map_err(|e| e.within("redirect"))?;
        }
        if let Some(direct) = &action.direct_response {
            if !(200..=599).contains(&direct.status) {
                return Err(ConfigError::new(
                    "direct_response.status",
                    "must be 200–599",
                ));
            }
            check_headers("direct_response.headers", &direct.headers)?;
            check_header_value(&direct.content_type)
                .map_err(|msg| ConfigError::new("direct_response.content_type", msg))?;
        }
        Ok(())
    }

    fn validate_split(&self, split: &Split) -> Result<(), ConfigError> {
        split.key.validate().map_err(|e| e.within("key"))?;
        if split.variants.is_empty() {
            return Err(ConfigError::new("variants", "needs at least one variant"));
        }
        let mut names = BTreeSet::new();
        let mut total = 0.0;
        for (index, variant) in split.variants.iter().enumerate() {
            let at = |field: &str| format!("variants[{index}].{field}");
            check_percent(variant.weight).map_err(|msg| ConfigError::new(at("weight"), msg))?;
            total += variant.weight;
            if let Some(lane) = &variant.lane {
                self.check_lane(lane)
                    .map_err(|msg| ConfigError::new(at("lane"), msg))?;
            }
            if variant.label().is_empty() {
                return Err(ConfigError::new(
                    format!("variants[{index}]"),
                    "needs a `name` or a `lane`",
                ));
            }
            if !names.insert(variant.label().to_owned()) {
                return Err(ConfigError::new(
                    format!("variants[{index}]"),
                    format!("variant `{}` appears twice", variant.label()),
                ));
            }
            check_headers(&at("set_headers"), &variant.set_headers)?;
        }
        if (total - 100.0).abs() > 1e-6 {
            return Err(ConfigError::new(
                "variants",
                format!("weights sum to {total}, not 100"),
            ));
        }
        if let Some(fallback) = &split.missing_key_variant {
            if !names.contains(fallback) {
                return Err(ConfigError::new(
                    "missing_key_variant",
                    format!("`{fallback}` is not a variant name"),
                ));
            }
        }
        Ok(())
    }
}

impl Match {
    fn validate(&self) -> Result<(), ConfigError> {
        for (index, method) in self.methods.iter().enumerate() {
            if !is_token(method) {
                return Err(ConfigError::new(
                    format!("methods[{index}]"),
                    format!("`{method}` is not an HTTP method"),
                ));
            }
        }
        let lists = [
            ("headers", &self.headers),
            ("query_params", &self.query_params),
            ("cookies", &self.cookies),
            ("claims", &self.claims),
            ("baggage", &self.baggage),
        ];
        for (field, matchers) in lists {
            for (index, matcher) in matchers.iter().enumerate() {
                matcher
                    .validate()
                    .map_err(|e| e.within(format!("{field}[{index}]")))?;
            }
        }
        for (index, matcher) in self.claims.iter().enumerate() {
            if !claims::is_path(&matcher.name) {
                return Err(ConfigError::new(
                    format!("claims[{index}].name"),
                    CLAIM_PATH_EXPECTED,
                ));
            }
        }
        Ok(())
    }
}

impl PathRewrite {
    fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::Prefix { from, to } => {
                check_path(from).map_err(|msg| ConfigError::new("prefix.from", msg))?;
                check_path(to).map_err(|msg| ConfigError::new("prefix.to", msg))
            }
            Self::Regex { substitution, .. } => {
                if substitution
                    .bytes()
                    .any(|b| b.is_ascii_control() || b == b' ')
                {
                    return Err(ConfigError::new(
                        "regex.substitution",
                        "cannot contain spaces or control characters",
                    ));
                }
                Ok(())
            }
        }
    }
}

impl StickyKey {
    fn validate(&self) -> Result<(), ConfigError> {
        let (field, name) = match self {
            Self::Header(name) => ("header", name),
            Self::Cookie(name) => ("cookie", name),
            Self::Claim(name) => ("claim", name),
        };
        if name.is_empty() {
            return Err(ConfigError::new(field, "must not be empty"));
        }
        if matches!(self, Self::Claim(_)) && !claims::is_path(name) {
            return Err(ConfigError::new(field, CLAIM_PATH_EXPECTED));
        }
        Ok(())
    }
}

impl Redirect {
    fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.status, 301 | 302 | 303 | 307 | 308) {
            return Err(ConfigError::new(
                "status",
                "must be 301, 302, 303, 307 or 308",
            ));
        }
        if self.path.is_some() && self.path_rewrite.is_some() {
            return Err(ConfigError::new(
                "path",
                "set `path` or `path_rewrite`, not both",
            ));
        }
        if let Some(path) = &self.path {
            check_path(path).map_err(|msg| ConfigError::new("path", msg))?;
        }
        if let Some(rewrite) = &self.path_rewrite {
            rewrite.validate().map_err(|e| e.within("path_rewrite"))?;
        }
        if let Some(scheme) = &self.scheme {
            if !matches!(scheme.as_str(), "http" | "https") {
                return Err(ConfigError::new("scheme", "must be `http` or `https`"));
            }
        }
        if let Some(host) = &self.host {
            if host.is_empty() || host.contains(['/', ' ', ':', '\r', '\n']) {
                return Err(ConfigError::new(
                    "host",
                    "must be a host name without port (use `port`)",
                ));
            }
        }
        Ok(())
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        for (index, name) in self.owned_headers.iter().enumerate() {
            check_header_name(&name.to_ascii_lowercase())
                .map_err(|msg| ConfigError::new(format!("owned_headers[{index}]"), msg))?;
        }
        check_header_name(&self.lane.header).map_err(|msg| ConfigError::new("lane.header", msg))?;
        if !is_token(&self.lane.baggage_key) {
            return Err(ConfigError::new(
                "lane.baggage_key",
                "must be a token (letters, digits, `-`, `_`, `.`)",
            ));
        }
        for (index, lane) in self.lane.allowed.iter().enumerate() {
            if !is_lane_value(lane) {
                return Err(ConfigError::new(
                    format!("lane.allowed[{index}]"),
                    format!("lane `{lane}` must be 1–{MAX_LANE_LEN} characters of [A-Za-z0-9._-]"),
                ));
            }
        }
        match &self.claims {
            ClaimsSource::FilterState(key) if key.is_empty() => {
                return Err(ConfigError::new("claims.filter_state", "must not be empty"))
            }
            ClaimsSource::Header(name) => {
                check_header_name(name).map_err(|msg| ConfigError::new("claims.header", msg))?
            }
            ClaimsSource::FilterState(_) => {}
        }
        if let Some(header) = &self.debug_header {
            check_header_name(header).map_err(|msg| ConfigError::new("debug_header", msg))?;
        }
        let mut names = BTreeSet::new();
        for (index, rule) in self.rules.iter().enumerate() {
            self.validate_rule(rule)
                .map_err(|e| e.within(format!("rules[{index}]")))?;
            if !names.insert(rule.name.as_str()) {
                return Err(ConfigError::new(
                    format!("rules[{index}].name"),
                    format!("rule `{}` appears twice", rule.name),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod manifest_tests;
#[cfg(test)]
mod tests;
