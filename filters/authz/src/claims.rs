//! Reading claims by dotted path (`realm.roles`) and rendering them for
//! headers and conditions.

use serde_json::Value;

/// The claim at `path`: a top-level key equal to the whole path first (some
/// issuers use URLs with dots as claim names), then nested objects.
pub fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.')
        .try_fold(claims, |value, key| value.get(key))
}

/// A scalar claim as text (`"alice"` → `alice`, `3` → `3`); objects and
/// null have none.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// A claim as a header value: scalars as text, lists of scalars joined with
/// commas, anything else as compact JSON.
pub fn header_value(value: &Value) -> String {
    match value {
        Value::Array(items) if items.iter().all(|item| scalar_text(item).is_some()) => items
            .iter()
            .filter_map(scalar_text)
            .collect::<Vec<_>>()
            .join(","),
        other => scalar_text(other).unwrap_or_else(|| other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_dotted_keys() {
        let claims = json!({"realm": {"roles": ["a", "b"]}, "https://x.io/team": "red", "n": 3});
        assert_eq!(lookup(&claims, "realm.roles"), Some(&json!(["a", "b"])));
        assert_eq!(lookup(&claims, "https://x.io/team"), Some(&json!("red")));
        assert_eq!(lookup(&claims, "realm.missing"), None);
        assert_eq!(lookup(&claims, "n.deeper"), None);
    }

    #[test]
    fn header_rendering() {
        assert_eq!(header_value(&json!(["a", 1, true])), "a,1,true");
        assert_eq!(header_value(&json!("alice")), "alice");
        assert_eq!(header_value(&json!({"a": 1})), r#"{"a":1}"#);
        assert_eq!(header_value(&json!([{"a": 1}])), r#"[{"a":1}]"#);
    }
}
