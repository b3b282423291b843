//! Field paths in the API server's notation: `spec.match[0].ports[0].number`.

use serde_json::Value;

/// Appends an object key to a dotted path. Keys that would read ambiguously
/// (empty, or containing `.`/`[`) are bracketed and quoted.
pub fn child(parent: &str, key: &str) -> String {
    let plain = !key.is_empty() && !key.contains(['.', '[', ']']);
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

/// Appends an array index to a dotted path.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Turns a JSON pointer into `instance` (`/spec/match/0/ports`) into a dotted
/// path (`spec.match[0].ports`). Numeric segments become `[n]` only where the
/// value is an array, so map keys such as `portLevelMtls."80"` stay keys.
pub fn from_pointer(pointer: &str, instance: &Value) -> String {
    let mut path = String::new();
    let mut current = Some(instance);
    for raw in pointer.split('/').skip(1) {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        match current {
            Some(Value::Array(items)) => match segment.parse::<usize>() {
                Ok(i) => {
                    path = index(&path, i);
                    current = items.get(i);
                }
                Err(_) => {
                    path = child(&path, &segment);
                    current = None;
                }
            },
            Some(Value::Object(map)) => {
                path = child(&path, &segment);
                current = map.get(&segment);
            }
            _ => {
                path = child(&path, &segment);
                current = None;
            }
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointer_becomes_dotted_path_with_indexes_only_for_arrays() {
        let doc = json!({"spec": {"match": [{"ports": [{}]}], "portLevelMtls": {"80": {}}}});
        assert_eq!(
            from_pointer("/spec/match/0/ports/0", &doc),
            "spec.match[0].ports[0]"
        );
        assert_eq!(
            from_pointer("/spec/portLevelMtls/80", &doc),
            "spec.portLevelMtls.80"
        );
        assert_eq!(from_pointer("", &doc), "");
    }

    #[test]
    fn awkward_keys_are_quoted() {
        assert_eq!(
            child("metadata.labels", "app.kubernetes.io/name"),
            "metadata.labels[\"app.kubernetes.io/name\"]"
        );
        assert_eq!(child("", "spec"), "spec");
        let doc = json!({"a/b": {"c~d": 1}});
        assert_eq!(from_pointer("/a~1b/c~0d", &doc), "a/b.c~d");
    }
}
