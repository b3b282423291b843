//! Rendering claims into the headers of `claims_to_headers`. Claims are found
//! with [`meshwasm_shared::claims`], the one meaning of a claim path.

use meshwasm_shared::claims::scalar_text;
use serde_json::Value;

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
    fn header_rendering() {
        assert_eq!(header_value(&json!(["a", 1, true])), "a,1,true");
        assert_eq!(header_value(&json!("alice")), "alice");
        assert_eq!(header_value(&json!({"a": 1})), r#"{"a":1}"#);
        assert_eq!(header_value(&json!([{"a": 1}])), r#"[{"a":1}]"#);
    }
}
