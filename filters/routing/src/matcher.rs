//! Value matchers used by rules: a named value (header, query parameter,
//! cookie, claim, baggage member) compared with exact/prefix/suffix/contains/
//! regex, or only tested for presence.

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
}
