//! Path patterns shared by every filter's matching: Istio AuthorizationPolicy
//! style (`/exact`, `/prefix*`, `*suffix`, `*`) and templates with segment
//! wildcards (`/orders/{id}`, `/a/{*}/b`, `/files/{**}`). A template segment
//! `{name}` or `{*}` matches exactly one non-empty segment; `{**}` matches the
//! rest of the path (zero or more segments) and must be last.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{*}` or `{name}`: one segment.
    One,
    /// `{**}`: the rest.
    Rest,
}

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(Self::Any);
        }
        if pattern.contains('{') {
            return Self::parse_template(pattern);
        }
        if let Some(prefix) = pattern.strip_suffix('*') {
            if prefix.contains('*') {
                return Err(format!(
                    "path `{pattern}`: `*` may only start or end a path"
                ));
            }
            return Ok(Self::Prefix(prefix.to_owned()));
        }
        if let Some(suffix) = pattern.strip_prefix('*') {
            if suffix.contains('*') {
                return Err(format!(
                    "path `{pattern}`: `*` may only start or end a path"
                ));
            }
            return Ok(Self::Suffix(suffix.to_owned()));
        }
        if pattern.contains('*') {
            return Err(format!(
                "path `{pattern}`: `*` may only start or end a path"
            ));
        }
        if !pattern.starts_with('/') {
            return Err(format!("path `{pattern}` must start with `/`"));
        }
        Ok(Self::Exact(pattern.to_owned()))
    }

    fn parse_template(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("path template `{pattern}` must start with `/`"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let segment = match *part {
                "{**}" if index + 1 == parts.len() => Segment::Rest,
                "{**}" => {
                    return Err(format!(
                        "path template `{pattern}`: `{{**}}` must be the last segment"
                    ))
                }
                part if part.starts_with('{') && part.ends_with('}') => {
                    let name = part
                        .strip_prefix('{')
                        .and_then(|inner| inner.strip_suffix('}'))
                        .unwrap_or_default();
                    if name != "*"
                        && (name.is_empty()
                            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                    {
                        return Err(format!("path template `{pattern}`: bad variable `{part}`"));
                    }
                    Segment::One
                }
                part if part.contains(['{', '}', '*']) => {
                    return Err(format!(
                    "path template `{pattern}`: a variable must be a whole segment, not `{part}`"
                ))
                }
                part => Segment::Literal(part.to_owned()),
            };
            segments.push(segment);
        }
        Ok(Self::Template(segments))
    }

    /// Matches a path without its query string.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => path == exact,
            Self::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Self::Suffix(suffix) => path.ends_with(suffix.as_str()),
            Self::Template(segments) => template_matches(segments, path),
        }
    }
}

fn template_matches(segments: &[Segment], path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    for segment in segments {
        match segment {
            Segment::Rest => return true,
            Segment::One => match parts.next() {
                Some(part) if !part.is_empty() => {}
                _ => return false,
            },
            Segment::Literal(literal) => {
                if parts.next() != Some(literal.as_str()) {
                    return false;
                }
            }
        }
    }
    parts.next().is_none()
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => write!(f, "*"),
            Self::Exact(exact) => write!(f, "{exact}"),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Suffix(suffix) => write!(f, "*{suffix}"),
            Self::Template(segments) => {
                for segment in segments {
                    match segment {
                        Segment::Literal(literal) => write!(f, "/{literal}")?,
                        Segment::One => write!(f, "/{{*}}")?,
                        Segment::Rest => write!(f, "/{{**}}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for PathPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern).unwrap().matches(path)
    }

    #[test]
    fn istio_style_patterns() {
        assert!(matches("*", "/anything"));
        assert!(matches("/healthz", "/healthz"));
        assert!(!matches("/healthz", "/healthz/x"));
        assert!(matches("/orders*", "/orders"));
        assert!(matches("/orders*", "/orders/1"));
        assert!(!matches("/orders*", "/order"));
        assert!(matches("*.png", "/img/a.png"));
        assert!(!matches("*.png", "/img/a.jpg"));
    }

    #[test]
    fn templates() {
        assert!(matches("/orders/{id}", "/orders/42"));
        assert!(!matches("/orders/{id}", "/orders/"));
        assert!(!matches("/orders/{id}", "/orders/42/items"));
        assert!(!matches("/orders/{id}", "/orders"));
        assert!(matches("/a/{*}/c", "/a/b/c"));
        assert!(!matches("/a/{*}/c", "/a/b/d"));
        assert!(matches("/files/{**}", "/files"));
        assert!(matches("/files/{**}", "/files/a/b/c"));
        assert!(!matches("/files/{**}", "/filesx"));
        assert!(matches("/{**}", "/x/y"));
    }

    #[test]
    fn refuses_malformed_patterns() {
        for bad in [
            "/a*b",
            "*a*",
            "orders",
            "/a/{**}/b",
            "/a/x{id}",
            "/a/{}",
            "/a/{b-c}",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn displays_normalized_template() {
        assert_eq!(
            PathPattern::parse("/orders/{id}").unwrap().to_string(),
            "/orders/{*}"
        );
        assert_eq!(
            PathPattern::parse("/files/{**}").unwrap().to_string(),
            "/files/{**}"
        );
        assert_eq!(PathPattern::parse("/o*").unwrap().to_string(), "/o*");
    }
}
