//! Plugin configuration: Istio hands `pluginConfig` to the filter as compact
//! JSON (or nothing at all when it is empty). Parsing reports the path of the
//! offending field; `Validate` adds the semantic checks serde cannot express.

use serde::de::DeserializeOwned;
use std::fmt;

/// A refused configuration, naming the field (`rules[2].match.path`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path, for errors raised by a nested value's `validate`.
    pub fn within(self, parent: impl fmt::Display) -> Self {
        let field = if self.field.is_empty() {
            parent.to_string()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        Self { field, ..self }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "invalid plugin config: {}", self.message)
        } else {
            write!(
                f,
                "invalid plugin config at `{}`: {}",
                self.field, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Semantic checks run after deserialization (ranges, cross-field rules).
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Validates every element, reporting the failing one as `[index]`.
pub fn validate_all<'a, T: Validate + 'a>(
    items: impl IntoIterator<Item = &'a T>,
) -> Result<(), ConfigError> {
    for (index, item) in items.into_iter().enumerate() {
        item.validate()
            .map_err(|err| err.within(format!("[{index}]")))?;
    }
    Ok(())
}

/// Parses and validates a plugin configuration. An absent or empty
/// configuration is read as `{}`, so every field's default applies.
pub fn parse<T: DeserializeOwned + Validate>(raw: Option<&[u8]>) -> Result<T, ConfigError> {
    let bytes = match raw {
        Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => bytes,
        _ => b"{}".as_slice(),
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let config: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let field = err.path().to_string();
        ConfigError::new(field, err.into_inner().to_string())
    })?;
    deserializer
        .end()
        .map_err(|err| ConfigError::new("", err.to_string()))?;
    config.validate()?;
    Ok(config)
}

/// Glue: the configuration Envoy hands the plugin (Istio's `pluginConfig`),
/// to give to [`parse`]; `None` when it is empty. A stage of a staged chain
/// gets its own part of the chain's configuration ([`crate::stage`]).
pub fn plugin_configuration() -> Option<Vec<u8>> {
    if let Some(stage_configuration) = crate::stage::configuration() {
        return stage_configuration;
    }
    proxy_wasm::hostcalls::get_buffer(
        proxy_wasm::types::BufferType::PluginConfiguration,
        0,
        usize::MAX,
    )
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        #[serde(default = "default_max")]
        max: u32,
        #[serde(default)]
        rules: Vec<Rule>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        name: String,
    }

    fn default_max() -> u32 {
        7
    }

    impl Validate for Rule {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.name.is_empty() {
                return Err(ConfigError::new("name", "must not be empty"));
            }
            Ok(())
        }
    }

    impl Validate for Limits {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.max == 0 {
                return Err(ConfigError::new("max", "must be at least 1"));
            }
            validate_all(&self.rules).map_err(|err| err.within("rules"))
        }
    }

    #[test]
    fn empty_or_absent_config_uses_defaults() {
        for raw in [None, Some(&b""[..]), Some(&b"  \n"[..])] {
            let limits: Limits = parse(raw).unwrap();
            assert_eq!(limits.max, 7);
        }
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let err = parse::<Limits>(Some(br#"{"rules":[{"name":"a","nmae":"b"}]}"#)).unwrap_err();
        assert_eq!(err.field, "rules[0].nmae");
        assert!(err.message.contains("unknown field `nmae`"), "{err}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let err = parse::<Limits>(Some(br#"{"max":"five"}"#)).unwrap_err();
        assert_eq!(err.field, "max");
    }

    #[test]
    fn semantic_error_carries_nested_path() {
        let err = parse::<Limits>(Some(br#"{"rules":[{"name":"a"},{"name":""}]}"#)).unwrap_err();
        assert_eq!(err.field, "rules[1].name");
        assert_eq!(
            err.to_string(),
            "invalid plugin config at `rules[1].name`: must not be empty"
        );
    }

    #[test]
    fn trailing_garbage_and_non_json_are_refused() {
        assert!(parse::<Limits>(Some(b"{} {}")).is_err());
        assert!(parse::<Limits>(Some(b"max: 3")).is_err());
    }

    #[test]
    fn istio_escaped_json_is_read_back() {
        // istiod writes Go-escaped JSON: `<` becomes \u003c.
        let err = parse::<Limits>(Some(br#"{"rules":[{"name":"a\u003cb"}],"max":0}"#)).unwrap_err();
        assert_eq!(err.field, "max");
    }
}
