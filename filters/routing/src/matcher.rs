//! Value matchers used by rules: a named value (header, query parameter,
//! cookie, claim, baggage member) compared with exact/prefix/suffix/contains/
//! regex, or only tested for presence; and host patterns.

use meshwasm_shared::config::ConfigError;
use serde::{Deserialize, Deserializer};
use std::fmt;

/// Compiled regexes are bounded so a pathological pattern cannot eat the VM.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A regex compiled when the config is read (a bad one refuses the config).
/// Matching is unanchored, like Rust's `Regex::is_match`; write `^...$` for a
/// whole-value match.
#[derive(Clone)]
pub struct Pattern(pub regex::Regex);

impl Pattern {
    pub fn new(source: &str) -> Result<Self, String> {
        regex::RegexBuilder::new(source)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Self)
            .map_err(|err| format!("bad regex `{source}`: {err}"))
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/", self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Self::new(&source).map_err(serde::de::Error::custom)
    }
}

/// `{"name": "x-user", "prefix": "test-"}`. At most one comparison; none
/// means "present". `invert` negates the result (absent values included).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedMatch {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub regex: Option<Pattern>,
    #[serde(default)]
    pub present: Option<bool>,
    #[serde(default)]
    pub invert: bool,
}

impl NamedMatch {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        let comparisons = [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.suffix.is_some(),
            self.contains.is_some(),
            self.regex.is_some(),
            self.present.is_some(),
        ];
        if comparisons.iter().filter(|set| **set).count() > 1 {
            return Err(ConfigError::new(
                "",
                "set at most one of `exact`, `prefix`, `suffix`, `contains`, `regex`, `present`",
            ));
        }
        Ok(())
    }

    /// Whether the values found under `name` satisfy this matcher: any value
    /// may match; no value at all only satisfies `present: false`.
    pub fn matches<'a>(&self, mut values: impl Iterator<Item = &'a str>) -> bool {
        let result = match self.present {
            Some(wanted) => values.next().is_some() == wanted,
            None => values.any(|value| self.compare(value)),
        };
        result != self.invert
    }

    fn compare(&self, value: &str) -> bool {
        if let Some(exact) = &self.exact {
            value == exact
        } else if let Some(prefix) = &self.prefix {
            value.starts_with(prefix.as_str())
        } else if let Some(suffix) = &self.suffix {
            value.ends_with(suffix.as_str())
        } else if let Some(contains) = &self.contains {
            value.contains(contains.as_str())
        } else if let Some(regex) = &self.regex {
            regex.0.is_match(value)
        } else {
            true
        }
    }
}

/// A `:authority` pattern: `*`, `*.example.com`, `api.*` or an exact host.
/// Case-insensitive; the port is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    Suffix(String),
    Prefix(String),
    Exact(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        if lower == "*" {
            return Ok(Self::Any);
        }
        let pattern = if let Some(rest) = lower.strip_prefix('*') {
            Self::Suffix(rest.to_owned())
        } else if let Some(rest) = lower.strip_suffix('*') {
            Self::Prefix(rest.to_owned())
        } else {
            Self::Exact(lower.clone())
        };
        match &pattern {
            Self::Suffix(rest) | Self::Prefix(rest) | Self::Exact(rest)
                if rest.is_empty() || rest.contains(['*', ':', '/', ' ']) =>
            {
                Err(format!(
                    "host `{text}`: use `*`, `*.suffix`, `prefix*` or a host without port"
                ))
            }
            _ => Ok(pattern),
        }
    }

    pub fn matches(&self, authority: &str) -> bool {
        let host = strip_port(authority).to_ascii_lowercase();
        match self {
            Self::Any => true,
            Self::Suffix(suffix) => host.ends_with(suffix.as_str()),
            Self::Prefix(prefix) => host.starts_with(prefix.as_str()),
            Self::Exact(exact) => host == *exact,
        }
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `host:port`, `[v6]:port`, `host` → the host part.
pub fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(json: &str) -> NamedMatch {
        let matcher: NamedMatch = serde_json::from_str(json).unwrap();
        matcher.validate().unwrap();
        matcher
    }

    #[test]
    fn comparisons() {
        let values = ["alpha", "beta"];
        let check = |json: &str| named(json).matches(values.iter().copied());
        assert!(check(r#"{"name":"x","exact":"beta"}"#));
        assert!(!check(r#"{"name":"x","exact":"bet"}"#));
        assert!(check(r#"{"name":"x","prefix":"al"}"#));
        assert!(check(r#"{"name":"x","suffix":"ta"}"#));
        assert!(check(r#"{"name":"x","contains":"lph"}"#));
        assert!(check(r#"{"name":"x","regex":"^b.t"}"#));
        assert!(!check(r#"{"name":"x","regex":"^gamma$"}"#));
        assert!(check(r#"{"name":"x"}"#));
        assert!(check(r#"{"name":"x","present":true}"#));
        assert!(!check(r#"{"name":"x","present":false}"#));
        assert!(!check(r#"{"name":"x","exact":"beta","invert":true}"#));
    }

    #[test]
    fn absent_values() {
        let none = || std::iter::empty::<&str>();
        assert!(!named(r#"{"name":"x"}"#).matches(none()));
        assert!(!named(r#"{"name":"x","exact":""}"#).matches(none()));
        assert!(named(r#"{"name":"x","present":false}"#).matches(none()));
        assert!(named(r#"{"name":"x","exact":"a","invert":true}"#).matches(none()));
    }

    #[test]
    fn refuses_two_comparisons_and_bad_regex() {
        let matcher: NamedMatch =
            serde_json::from_str(r#"{"name":"x","exact":"a","prefix":"b"}"#).unwrap();
        assert!(matcher.validate().is_err());
        let err = serde_json::from_str::<NamedMatch>(r#"{"name":"x","regex":"(unclosed"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad regex"), "{err}");
    }

    #[test]
    fn hosts() {
        let host = |p: &str, a: &str| HostPattern::parse(p).unwrap().matches(a);
        assert!(host("*", "anything:80"));
        assert!(host("*.example.com", "API.example.com:8443"));
        assert!(!host("*.example.com", "example.org"));
        assert!(host(
            "inventory*",
            "inventory.inventory-app.svc.cluster.local"
        ));
        assert!(host("order", "order:8080"));
        assert!(!host("order", "orders"));
        for bad in ["", "a*b", "host:80", "a/b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a:1"), "a");
        assert_eq!(strip_port("a"), "a");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
