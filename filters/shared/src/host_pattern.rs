//! Host patterns: how every filter matches the request's `:authority`.
//!
//! A pattern is `*` (any host), `*suffix` (`*.example.com`), `prefix*`
//! (`payment*`) or an exact host, optionally followed by `:port`. It is
//! compared, ignoring ASCII case, with the request's host: the `:authority`
//! without its `:port`, the brackets of an IPv6 literal and a trailing dot
//! (`[::1]:8080` → `::1`, `API.example.com.:443` → `api.example.com`; a bare
//! IPv6 literal such as `::1` has no port). A pattern without a port matches
//! any port or none; one with a port (`payment:8080`, `[::1]:8080`) matches
//! only requests naming that port. Patterns are parsed when the config is
//! read; matching does not allocate.

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    name: NamePattern,
    port: Option<u16>,
}

/// The host part, lower-case, without brackets or trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "host `{text}`: use `*`, `*suffix`, `prefix*` or a host, with an optional `:port`"
            )
        };
        let (host, port) = split_authority(text);
        let port = port
            .map(|port| port.parse::<u16>().map_err(|_| invalid()))
            .transpose()?;
        let host = host.to_ascii_lowercase();
        let name = if host == "*" {
            NamePattern::Any
        } else if let Some(suffix) = host.strip_prefix('*') {
            NamePattern::Suffix(without_trailing_dot(suffix).to_owned())
        } else if let Some(prefix) = host.strip_suffix('*') {
            NamePattern::Prefix(prefix.to_owned())
        } else {
            NamePattern::Exact(without_trailing_dot(&host).to_owned())
        };
        match &name {
            NamePattern::Exact(part) | NamePattern::Prefix(part) | NamePattern::Suffix(part)
                if !is_host_text(part) =>
            {
                Err(invalid())
            }
            _ => Ok(Self { name, port }),
        }
    }

    /// Whether the request's `:authority` (or `Host`) matches.
    pub fn matches(&self, authority: &str) -> bool {
        let (host, port) = split_authority(authority);
        if self.port.is_some() && port.and_then(|port| port.parse().ok()) != self.port {
            return false;
        }
        let host = without_trailing_dot(host);
        match &self.name {
            NamePattern::Any => true,
            NamePattern::Exact(exact) => host.eq_ignore_ascii_case(exact),
            NamePattern::Prefix(prefix) => host
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
            NamePattern::Suffix(suffix) => host
                .len()
                .checked_sub(suffix.len())
                .and_then(|start| host.get(start..))
                .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix)),
        }
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Non-empty, no further `*`, no characters an authority cannot hold, and
/// a `:` only inside an IPv6 literal (a single one is a bad port).
fn is_host_text(part: &str) -> bool {
    !part.is_empty()
        && !part.contains(['*', '/', '[', ']', '@'])
        && !part.chars().any(|c| c.is_whitespace() || c.is_control())
        && part.matches(':').count() != 1
}

fn without_trailing_dot(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// An authority's host and port: `host:8080` → (`host`, `8080`), `[::1]:8080`
/// → (`::1`, `8080`), `[::1]` → (`::1`, none). A bare IPv6 literal (`::1`) is
/// all host; an empty port (`host:`) is none.
pub fn split_authority(authority: &str) -> (&str, Option<&str>) {
    if let Some((ipv6, after)) = authority
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
    {
        return match after.strip_prefix(':') {
            Some(port) if is_port(port) => (ipv6, non_empty(port)),
            None if after.is_empty() => (ipv6, None),
            _ => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && is_port(port) => (host, non_empty(port)),
        _ => (authority, None),
    }
}

fn is_port(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit())
}

fn non_empty(port: &str) -> Option<&str> {
    (!port.is_empty()).then_some(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, authority: &str) -> bool {
        HostPattern::parse(pattern).unwrap().matches(authority)
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority("a"), ("a", None));
        assert_eq!(split_authority("a:1"), ("a", Some("1")));
        assert_eq!(split_authority("a:"), ("a", None));
        assert_eq!(split_authority("[::1]:8080"), ("::1", Some("8080")));
        assert_eq!(split_authority("[::1]"), ("::1", None));
        assert_eq!(split_authority("::1"), ("::1", None));
        assert_eq!(split_authority("fe80::1:80"), ("fe80::1:80", None));
        assert_eq!(split_authority("a:b"), ("a:b", None));
        assert_eq!(split_authority("[::1]x"), ("[::1]x", None));
        assert_eq!(split_authority(""), ("", None));
    }

    #[test]
    fn forms_and_case() {
        assert!(matches("*", "anything:80"));
        assert!(matches("*", ""));
        assert!(matches("payment", "PAYMENT"));
        assert!(matches("Payment", "payment"));
        assert!(!matches("payment", "payments"));
        assert!(matches("*.example.com", "API.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "example.org"));
        assert!(matches("payment*", "payment.order-app.svc.cluster.local"));
        assert!(matches("api.*", "API.v2"));
        assert!(!matches("pay*", "inventory"));
        assert!(!matches("*.é.com", "é"));
    }

    #[test]
    fn ports() {
        assert!(matches("payment", "payment:8080"));
        assert!(matches(
            "*.svc.cluster.local",
            "payment.order-app.svc.cluster.local:80"
        ));
        assert!(matches("payment:8080", "payment:8080"));
        assert!(!matches("payment:8080", "payment:9090"));
        assert!(!matches("payment:8080", "payment"));
        assert!(matches("*:8080", "anything:8080"));
        assert!(!matches("payment", "payment:abc"));
    }

    #[test]
    fn ipv6_literals() {
        for pattern in ["::1", "[::1]"] {
            for authority in ["::1", "[::1]", "[::1]:8080"] {
                assert!(matches(pattern, authority), "{pattern} vs {authority}");
            }
            assert!(!matches(pattern, "::2"));
        }
        assert!(matches("[::1]:8080", "[::1]:8080"));
        assert!(!matches("[::1]:8080", "[::1]:9090"));
        assert!(!matches("[::1]:8080", "::1"));
        assert!(matches("FE80::*", "[fe80::1]:443"));
    }

    #[test]
    fn trailing_dot() {
        assert!(matches("example.com", "example.com.:443"));
        assert!(matches("example.com.", "example.com"));
        assert!(matches("*.example.com", "api.example.com."));
        assert!(matches("*.example.com.", "api.example.com"));
    }

    #[test]
    fn refused_patterns() {
        for bad in [
            "",
            "a*b",
            "*a*",
            "**",
            "*.",
            "host:abc",
            "host:99999",
            ":80",
            "a/b",
            "a b",
            "[::1",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        let err = serde_json::from_str::<HostPattern>(r#""a*b""#).unwrap_err();
        assert!(err.to_string().contains("host `a*b`"), "{err}");
    }
}
