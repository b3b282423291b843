//! Claim paths: how every filter finds a claim of the verified token.
//!
//! A claim path names a top-level claim, or a nested one with dots
//! (`realm.roles`, `org.tenant`). A top-level key equal to the whole path is
//! tried first, so claim names that contain dots (URL-style names such as
//! `https://x.io/tenant`) are found as they are. A scalar claim reads as text:
//! strings as they are, numbers and booleans in JSON form (`42`, `true`);
//! objects, lists and `null` have no text.

use serde_json::Value;

/// Whether `path` can name a claim: not empty, no empty dotted segment.
pub fn is_path(path: &str) -> bool {
    !path.is_empty() && !path.split('.').any(str::is_empty)
}

/// The claim at `path`: the top-level key equal to the whole path, else the
/// dotted path through nested objects.
pub fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    claims.get(path).or_else(|| {
        path.split('.')
            .try_fold(claims, |value, key| value.get(key))
    })
}

/// A scalar claim as text (`"alice"` → `alice`, `3` → `3`, `true` → `true`).
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// The scalar claim at `path` as text.
pub fn lookup_text(claims: &Value, path: &str) -> Option<String> {
    lookup(claims, path).and_then(scalar_text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_key_first_then_dotted_path() {
        let claims = json!({
            "realm": {"roles": ["a", "b"]},
            "https://x.io/tenant": "acme",
            "a.b": "whole",
            "a": {"b": "nested"},
            "n": 3
        });
        assert_eq!(lookup(&claims, "realm.roles"), Some(&json!(["a", "b"])));
        assert_eq!(lookup(&claims, "https://x.io/tenant"), Some(&json!("acme")));
        assert_eq!(lookup(&claims, "a.b"), Some(&json!("whole")));
        assert_eq!(lookup(&claims, "realm.missing"), None);
        assert_eq!(lookup(&claims, "n.deeper"), None);
        assert_eq!(lookup(&json!("not an object"), "n"), None);
    }

    #[test]
    fn scalars_read_as_text() {
        let claims = json!({"s": "alice", "n": 42, "f": 1.5, "b": true, "no": false,
            "null": null, "list": ["a"], "obj": {"k": 1}});
        let text = |path| lookup_text(&claims, path);
        assert_eq!(text("s").as_deref(), Some("alice"));
        assert_eq!(text("n").as_deref(), Some("42"));
        assert_eq!(text("f").as_deref(), Some("1.5"));
        assert_eq!(text("b").as_deref(), Some("true"));
        assert_eq!(text("no").as_deref(), Some("false"));
        for no_text in ["null", "list", "obj", "missing"] {
            assert_eq!(text(no_text), None, "{no_text}");
        }
    }

    #[test]
    fn paths() {
        for good in ["sub", "org.tenant", "https://x.io/tenant"] {
            assert!(is_path(good), "{good}");
        }
        for bad in ["", ".", "a..b", ".a", "a."] {
            assert!(!is_path(bad), "{bad}");
        }
    }
}
