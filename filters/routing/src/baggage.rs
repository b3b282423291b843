//! W3C Baggage (`baggage` header): `key=value;prop,key2=value2`.
//!
//! Parsing is member-wise and forgiving: a malformed member (no `=`, a key that
//! is not a token, a value with bad percent-encoding or non-UTF-8 bytes) is
//! dropped and the rest kept. The spec's limits are enforced on what is kept
//! and what is sent: at most [`MAX_MEMBERS`] members and [`MAX_BYTES`] bytes.
//! Members this filter does not touch are forwarded byte for byte (properties
//! included).

use std::fmt::Write;

/// W3C Baggage: a baggage string carries at most 8192 bytes...
pub const MAX_BYTES: usize = 8192;
/// ...and at most 180 list members.
pub const MAX_MEMBERS: usize = 180;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    key: String,
    value: String,
    /// The member as it will be sent (`key=value;props`).
    text: String,
}

impl Baggage {
    /// Parses one or more `baggage` header values (joined with `,`).
    pub fn parse(header: &str) -> Self {
        let mut members = Vec::new();
        let mut bytes = 0;
        for text in header.split(',') {
            let text = text.trim_matches([' ', '\t']);
            if text.is_empty() {
                continue;
            }
            let Some(member) = Member::parse(text) else {
                continue;
            };
            if members.len() == MAX_MEMBERS {
                break;
            }
            let separator = usize::from(!members.is_empty());
            if bytes + separator + member.text.len() > MAX_BYTES {
                continue;
            }
            bytes += separator + member.text.len();
            members.push(member);
        }
        Self { members }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The decoded value of the first member named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|member| member.key == key)
            .map(|member| member.value.as_str())
    }

    /// Removes every member named `key`; true when one was there.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.members.len();
        self.members.retain(|member| member.key != key);
        before != self.members.len()
    }

    /// Sets `key` to `value` (replacing earlier members of that name). The
    /// member goes first, so the size limits drop other members, not it.
    /// `key` must be a token (config validation ensures it).
    pub fn set(&mut self, key: &str, value: &str) {
        self.remove(key);
        let text = format!("{key}={}", percent_encode(value));
        self.members.insert(
            0,
            Member {
                key: key.to_owned(),
                value: value.to_owned(),
                text,
            },
        );
    }

    /// The header value, within the spec's limits (members that do not fit
    /// are dropped).
    pub fn to_header(&self) -> String {
        let mut out = String::new();
        let mut kept = 0;
        for member in &self.members {
            if kept == MAX_MEMBERS {
                break;
            }
            let separator = usize::from(kept > 0);
            if out.len() + separator + member.text.len() > MAX_BYTES {
                continue;
            }
            if kept > 0 {
                out.push(',');
            }
            out.push_str(&member.text);
            kept += 1;
        }
        out
    }
}

impl Member {
    fn parse(text: &str) -> Option<Self> {
        let (pair, _properties) = text.split_once(';').unwrap_or((text, ""));
        let (key, value) = pair.split_once('=')?;
        let key = key.trim_matches([' ', '\t']);
        let value = value.trim_matches([' ', '\t']);
        if !is_token(key) || !value.bytes().all(is_baggage_octet_or_percent) {
            return None;
        }
        Some(Self {
            key: key.to_owned(),
            value: percent_decode(value)?,
            text: text.to_owned(),
        })
    }
}

/// RFC 7230 `token`: the grammar of baggage keys and of header names.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// W3C `baggage-octet`: printable ASCII except space, `"`, `,`, `;`, `\`.
fn is_baggage_octet(byte: u8) -> bool {
    matches!(byte, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

fn is_baggage_octet_or_percent(byte: u8) -> bool {
    is_baggage_octet(byte) || byte == b'%'
}

/// Decodes `%XX` escapes; `None` for a broken escape or non-UTF-8 result.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%' {
            let high = bytes
                .get(index + 1)
                .and_then(|b| (*b as char).to_digit(16))?;
            let low = bytes
                .get(index + 2)
                .and_then(|b| (*b as char).to_digit(16))?;
            // Two hex digits are at most 255.
            out.push((high * 16 + low) as u8);
            index += 3;
        } else {
            out.push(byte);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes everything outside `baggage-octet`, and `%` itself.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if is_baggage_octet(byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_members_with_properties_and_whitespace() {
        let baggage = Baggage::parse("a=1, b = two ;prop=x;flag ,c=%20sp%C3%A9");
        assert_eq!(baggage.get("a"), Some("1"));
        assert_eq!(baggage.get("b"), Some("two"));
        assert_eq!(baggage.get("c"), Some(" spé"));
        assert_eq!(baggage.get("d"), None);
        assert_eq!(
            baggage.to_header(),
            "a=1,b = two ;prop=x;flag,c=%20sp%C3%A9"
        );
    }

    #[test]
    fn malformed_members_are_dropped_one_by_one() {
        let baggage =
            Baggage::parse("good=1,noequals,bad key=2,=empty,x=%zz,y=%,z=a\"b,w=%FF,,  ,ok=3");
        assert_eq!(baggage.to_header(), "good=1,ok=3");
    }

    #[test]
    fn garbage_never_panics() {
        for input in [
            "",
            ",,,",
            "=",
            ";",
            "a=;",
            "%",
            "\u{1F600}=x",
            "a=\u{1F600}",
            "a==b",
        ] {
            let baggage = Baggage::parse(input);
            let _ = baggage.to_header();
        }
        assert_eq!(Baggage::parse("a==b").get("a"), Some("=b"));
    }

    #[test]
    fn limits_are_enforced_on_parse_and_on_send() {
        let many: Vec<String> = (0..300).map(|i| format!("k{i}=v")).collect();
        let baggage = Baggage::parse(&many.join(","));
        assert_eq!(baggage.members.len(), MAX_MEMBERS);

        let big = format!("a={},b=2", "x".repeat(MAX_BYTES));
        let baggage = Baggage::parse(&big);
        // `a` alone is over the limit: it is dropped, `b` kept.
        assert_eq!(baggage.get("a"), None);
        assert_eq!(baggage.get("b"), Some("2"));

        let near = format!("a={},b=2", "x".repeat(MAX_BYTES - 10));
        let mut baggage = Baggage::parse(&near);
        assert_eq!(baggage.get("b"), Some("2"));
        baggage.set("meshwasm-lane", "v2");
        let header = baggage.to_header();
        assert!(header.len() <= MAX_BYTES);
        assert_eq!(header, "meshwasm-lane=v2,b=2");
    }

    #[test]
    fn set_replaces_and_encodes() {
        let mut baggage = Baggage::parse("meshwasm-lane=v1;p,other=x,meshwasm-lane=v3");
        baggage.set("meshwasm-lane", "v 2,;");
        assert_eq!(baggage.get("meshwasm-lane"), Some("v 2,;"));
        assert_eq!(baggage.to_header(), "meshwasm-lane=v%202%2C%3B,other=x");
        assert_eq!(
            Baggage::parse(&baggage.to_header()).get("meshwasm-lane"),
            Some("v 2,;")
        );
    }

    #[test]
    fn remove_reports_whether_anything_changed() {
        let mut baggage = Baggage::parse("a=1,b=2");
        assert!(baggage.remove("a"));
        assert!(!baggage.remove("a"));
        assert_eq!(baggage.to_header(), "b=2");
    }

    #[test]
    fn percent_round_trip() {
        for text in ["plain", "100%", "a b", "é", "x=y;z"] {
            assert_eq!(percent_decode(&percent_encode(text)).as_deref(), Some(text));
        }
    }

    #[test]
    fn tokens() {
        assert!(is_token("meshwasm-lane"));
        assert!(is_token("x_y.z"));
        assert!(!is_token(""));
        assert!(!is_token("a b"));
        assert!(!is_token("a=b"));
    }
}
