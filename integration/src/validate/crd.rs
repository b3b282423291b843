//! Validation of custom resources against their CRD's `openAPIV3Schema`.
//!
//! A CRD schema is an OpenAPI v3 "structural schema", which the API server
//! reads differently from plain JSON Schema. [`to_json_schema`] rewrites it so
//! that the `jsonschema` crate enforces what the API server enforces:
//!
//! - Unknown fields are errors: the API server prunes fields the schema does
//!   not list, and `kubectl apply` (strict field validation by default since
//!   Kubernetes 1.27) reports each pruned field as an error. So every
//!   `type: object` schema without `additionalProperties` and without
//!   `x-kubernetes-preserve-unknown-fields: true` gets
//!   `additionalProperties: false`. The root `metadata` is left open here; it
//!   is checked as an `ObjectMeta` elsewhere.
//! - `nullable: true` allows `null` (otherwise `null` is a type error).
//! - `x-kubernetes-int-or-string: true` accepts an integer or a string.
//! - `format` is not checked (the API server ignores the formats these CRDs
//!   use: int32, double, date-time, byte).
//! - `x-kubernetes-list-type: map`/`set`: items must be unique by their keys;
//!   checked by [`check_list_types`] since JSON Schema cannot express it.
//! - CEL rules (`x-kubernetes-validations`) are NOT evaluated: there is no CEL
//!   engine here. Cross-field rules such as "only one of targetRefs or
//!   selector" or "value may only be set when valueFrom is INLINE" pass.
//!
//! Messages imitate the API server's (`spec.url in body should be at least 1
//! chars long`, `Unsupported value: "BLAH": supported values: ...`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::error::ValidationErrorKind;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::paths;
use super::FieldError;

/// CRDs by (group, kind).
type CrdIndex = HashMap<(String, String), Crd>;

/// The Istio CRDs of one folder, loaded on first use, and compiled schemas.
pub(crate) struct CrdStore {
    dir: PathBuf,
    crds: OnceLock<Result<CrdIndex, String>>,
    compiled: Mutex<HashMap<(String, String, String), Arc<CompiledSchema>>>,
}

struct Crd {
    file: PathBuf,
    versions: Vec<CrdVersion>,
}

struct CrdVersion {
    name: String,
    served: bool,
    schema: Value,
}

struct CompiledSchema {
    /// The rewritten schema; error locations point into it.
    schema: Value,
    validator: jsonschema::Validator,
}

impl CrdStore {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            crds: OnceLock::new(),
            compiled: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Validates a whole custom resource against its CRD.
    pub fn validate(
        &self,
        group: &str,
        version: &str,
        kind: &str,
        value: &Value,
    ) -> Vec<FieldError> {
        match self.compiled_schema(group, version, kind) {
            Ok(compiled) => schema_errors(&compiled, value),
            Err(error) => vec![error],
        }
    }

    fn crds(&self) -> Result<&CrdIndex, String> {
        self.crds
            .get_or_init(|| load_crds(&self.dir))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn compiled_schema(
        &self,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Result<Arc<CompiledSchema>, FieldError> {
        let key = (group.to_string(), version.to_string(), kind.to_string());
        let mut compiled = self
            .compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = compiled.get(&key) {
            return Ok(Arc::clone(found));
        }
        let crds = self.crds().map_err(|e| FieldError::new("kind", e))?;
        let crd = crds
            .get(&(group.to_string(), kind.to_string()))
            .ok_or_else(|| {
                let mut known: Vec<String> = crds.keys().map(|(g, k)| format!("{g}/{k}")).collect();
                known.sort();
                FieldError::new(
                    "kind",
                    format!(
                        "unknown kind {kind:?} in group {group:?}: no CRD for it in {} (it has {})",
                        self.dir.display(),
                        known.join(", ")
                    ),
                )
            })?;
        let crd_version = crd
            .versions
            .iter()
            .find(|v| v.served && v.name == version)
            .ok_or_else(|| {
                let served: Vec<&str> = crd
                    .versions
                    .iter()
                    .filter(|v| v.served)
                    .map(|v| v.name.as_str())
                    .collect();
                FieldError::new(
                    "apiVersion",
                    format!(
                        "{group}/{version} {kind} is not served; served versions: {}",
                        served.join(", ")
                    ),
                )
            })?;
        let schema = to_json_schema(&crd_version.schema);
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(false)
            .build(&schema)
            .map_err(|e| {
                FieldError::new(
                    "kind",
                    format!(
                        "the schema of {kind} {version} in {} does not compile: {e}",
                        crd.file.display()
                    ),
                )
            })?;
        let entry = Arc::new(CompiledSchema { schema, validator });
        compiled.insert(key, Arc::clone(&entry));
        Ok(entry)
    }
}

/// Reads every CustomResourceDefinition in the `*.yaml` files of `dir`, keyed
/// by (group, kind). A file may hold one CRD or many (Istio's
/// `crd-all.gen.yaml` bundle); other documents are ignored.
fn load_crds(dir: &Path) -> Result<CrdIndex, String> {
    let hint = super::crds_hint();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        format!(
            "cannot read the Istio CRD folder {}: {e}; {hint}",
            dir.display()
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut crds = HashMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        for (position, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc = Value::deserialize(document).map_err(|e| {
                format!(
                    "{} document {}: invalid YAML: {e}",
                    file.display(),
                    position + 1
                )
            })?;
            if doc.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
                continue;
            }
            let (key, crd) = parse_crd(&file, &doc)?;
            crds.insert(key, crd);
        }
    }
    if crds.is_empty() {
        return Err(format!(
            "no CustomResourceDefinition in {}; {hint}",
            dir.display()
        ));
    }
    Ok(crds)
}

fn parse_crd(file: &Path, doc: &Value) -> Result<((String, String), Crd), String> {
    let spec = &doc["spec"];
    let (Some(group), Some(kind)) = (spec["group"].as_str(), spec["names"]["kind"].as_str()) else {
        return Err(format!(
            "{}: CRD without spec.group or spec.names.kind",
            file.display()
        ));
    };
    let versions = spec["versions"]
        .as_array()
        .map(|versions| {
            versions
                .iter()
                .map(|v| CrdVersion {
                    name: v["name"].as_str().unwrap_or_default().to_string(),
                    served: v["served"].as_bool().unwrap_or(false),
                    schema: v["schema"]["openAPIV3Schema"].clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let crd = Crd {
        file: file.to_path_buf(),
        versions,
    };
    Ok(((group.to_string(), kind.to_string()), crd))
}

/// Rewrites a structural schema into a JSON Schema (draft 4) that the
/// `jsonschema` crate evaluates the way the API server does (module docs).
pub fn to_json_schema(structural: &Value) -> Value {
    let mut schema = structural.clone();
    // Every object has apiVersion, kind and metadata, whether or not the CRD
    // lists them (Istio's list only spec and status).
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        for (name, field) in [
            ("apiVersion", json!({"type": "string"})),
            ("kind", json!({"type": "string"})),
            ("metadata", json!({"type": "object"})),
        ] {
            properties.entry(name).or_insert(field);
        }
    }
    rewrite(&mut schema, true);
    schema
}

fn rewrite(schema: &mut Value, is_root: bool) {
    let Value::Object(node) = schema else { return };
    if let Some(Value::Object(properties)) = node.get_mut("properties") {
        for (name, property) in properties.iter_mut() {
            if is_root && name == "metadata" {
                continue;
            }
            rewrite(property, false);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = node.get_mut(key) {
            rewrite(sub, false);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = node.get_mut(key) {
            subs.iter_mut().for_each(|s| rewrite(s, false));
        }
    }

    let preserves_unknown = node
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if node.get("type").and_then(Value::as_str) == Some("object")
        && !preserves_unknown
        && !node.contains_key("additionalProperties")
    {
        node.insert("additionalProperties".into(), Value::Bool(false));
    }
    if node
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
        && !node.contains_key("anyOf")
    {
        node.insert(
            "anyOf".into(),
            json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    if node.get("nullable").and_then(Value::as_bool) == Some(true) {
        if let Some(Value::String(t)) = node.get("type").cloned() {
            node.insert("type".into(), json!([t, "null"]));
        }
        if let Some(Value::Array(options)) = node.get_mut("enum") {
            options.push(Value::Null);
        }
    }
}

fn schema_errors(compiled: &CompiledSchema, value: &Value) -> Vec<FieldError> {
    let mut errors: Vec<FieldError> = compiled
        .validator
        .iter_errors(value)
        .flat_map(|e| field_errors(&e, &compiled.schema, value))
        .collect();
    check_list_types(&compiled.schema, value, "", &mut errors);
    errors.dedup();
    errors
}

/// Turns one `jsonschema` error into API-server style field errors.
fn field_errors(
    error: &jsonschema::ValidationError<'_>,
    schema: &Value,
    root: &Value,
) -> Vec<FieldError> {
    let path = paths::from_pointer(error.instance_path.as_str(), root);
    let shown = if path.is_empty() {
        "<root>".to_string()
    } else {
        path.clone()
    };
    let instance = error.instance.as_ref();
    let keyword_value = || {
        schema
            .pointer(error.schema_path.as_str())
            .cloned()
            .unwrap_or(Value::Null)
    };
    let invalid = |detail: String| {
        FieldError::new(
            shown.clone(),
            format!(
                "Invalid value: {}: {shown} in body {detail}",
                short_json(instance)
            ),
        )
    };
    match &error.kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|name| {
                let field = paths::child(&path, name);
                FieldError::new(field.clone(), format!("unknown field {field:?}"))
            })
            .collect(),
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            vec![FieldError::new(paths::child(&path, name), "Required value")]
        }
        ValidationErrorKind::Enum { options } => {
            let supported: Vec<String> = options
                .as_array()
                .map(|o| o.iter().filter(|v| !v.is_null()).map(short_json).collect())
                .unwrap_or_default();
            vec![FieldError::new(
                shown.clone(),
                format!(
                    "Unsupported value: {}: supported values: {}",
                    short_json(instance),
                    supported.join(", ")
                ),
            )]
        }
        ValidationErrorKind::Type { .. } => {
            let expected = match keyword_value() {
                Value::String(t) => t,
                Value::Array(ts) => ts
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|t| *t != "null")
                    .collect::<Vec<_>>()
                    .join(" or "),
                _ => "?".to_string(),
            };
            vec![FieldError::new(
                shown.clone(),
                format!(
                    "Invalid value: {}: {shown} in body must be of type {expected}: {:?}",
                    short_json(instance),
                    json_type(instance)
                ),
            )]
        }
        ValidationErrorKind::MinLength { limit } => {
            vec![invalid(format!("should be at least {limit} chars long"))]
        }
        ValidationErrorKind::MaxLength { limit } => {
            vec![invalid(format!("may not be longer than {limit}"))]
        }
        ValidationErrorKind::Pattern { pattern } => {
            vec![invalid(format!("should match '{pattern}'"))]
        }
        ValidationErrorKind::Minimum { limit } => {
            vec![invalid(format!(
                "should be greater than or equal to {limit}"
            ))]
        }
        ValidationErrorKind::Maximum { limit } => {
            vec![invalid(format!("should be less than or equal to {limit}"))]
        }
        ValidationErrorKind::ExclusiveMinimum { limit } => {
            vec![invalid(format!("should be greater than {limit}"))]
        }
        ValidationErrorKind::ExclusiveMaximum { limit } => {
            vec![invalid(format!("should be less than {limit}"))]
        }
        ValidationErrorKind::MinItems { limit } => {
            vec![invalid(format!("should have at least {limit} items"))]
        }
        ValidationErrorKind::MaxItems { limit } => vec![FieldError::new(
            shown.clone(),
            format!("Too many: must have at most {limit} items"),
        )],
        ValidationErrorKind::MinProperties { limit } => {
            vec![invalid(format!("should have at least {limit} properties"))]
        }
        ValidationErrorKind::MaxProperties { limit } => {
            vec![invalid(format!("should have at most {limit} properties"))]
        }
        ValidationErrorKind::OneOfMultipleValid { .. }
        | ValidationErrorKind::OneOfNotValid { .. } => {
            // Istio's generated schemas use oneOf only for protobuf oneofs:
            // [not anyOf [required a, required b], required a, required b].
            let schema_path = error.schema_path.as_str();
            let branches = schema.pointer(schema_path).cloned().unwrap_or(Value::Null);
            let fields = oneof_fields(&branches);
            let detail = if fields.is_empty() {
                "must validate one and only one schema (oneOf)".to_string()
            } else {
                format!("must set at most one of: {}", fields.join(", "))
            };
            vec![invalid(detail)]
        }
        _ => vec![FieldError::new(shown, error.to_string())],
    }
}

/// The field names of a protobuf-oneof style `oneOf` (`required` branches).
fn oneof_fields(branches: &Value) -> Vec<String> {
    let mut fields = Vec::new();
    for branch in branches.as_array().into_iter().flatten() {
        for name in branch["required"].as_array().into_iter().flatten() {
            if let Some(name) = name.as_str() {
                if !fields.iter().any(|f| f == name) {
                    fields.push(name.to_string());
                }
            }
        }
    }
    fields
}

/// Duplicate items in `x-kubernetes-list-type: map` (by the list-map keys)
/// and `set` lists, reported as the API server does (`Duplicate value`).
fn check_list_types(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            for (name, field) in fields {
                let sub = properties.and_then(|p| p.get(name)).or(additional);
                if let Some(sub) = sub {
                    check_list_types(sub, field, &paths::child(path, name), errors);
                }
            }
        }
        Value::Array(items) => {
            let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|ks| ks.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let identity = match list_type {
                    Some("map") => Some(Value::Object(
                        keys.iter()
                            .map(|k| (k.to_string(), item.get(*k).cloned().unwrap_or(Value::Null)))
                            .collect::<Map<String, Value>>(),
                    )),
                    Some("set") => Some(item.clone()),
                    _ => None,
                };
                if let Some(identity) = identity {
                    if !seen.insert(identity.to_string()) {
                        errors.push(FieldError::new(
                            paths::index(path, i),
                            format!("Duplicate value: {}", short_json(&identity)),
                        ));
                    }
                }
                if let Some(sub) = schema.get("items") {
                    check_list_types(sub, item, &paths::index(path, i), errors);
                }
            }
        }
        _ => {}
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// JSON text of a value, cut to a readable length.
fn short_json(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(77).collect();
        format!("{cut}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_crd(group: &str, kind: &str) -> String {
        format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nspec:\n  group: {group}\n  names: {{kind: {kind}}}\n  versions:\n  - name: v1\n    served: true\n    schema:\n      openAPIV3Schema: {{type: object}}\n"
        )
    }

    #[test]
    fn a_bundle_file_yields_every_crd_it_holds() {
        let dir = std::env::temp_dir().join(format!("meshwasm-crd-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bundle = format!(
            "# DO NOT EDIT\n{}---\napiVersion: v1\nkind: ConfigMap\n---\n{}",
            tiny_crd("a.istio.io", "One"),
            tiny_crd("b.istio.io", "Two")
        );
        std::fs::write(dir.join("crd-all.gen.yaml"), bundle).unwrap();
        std::fs::write(dir.join("README.md"), "not read").unwrap();
        let crds = load_crds(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let mut kinds: Vec<_> = crds.unwrap().into_keys().collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                ("a.istio.io".to_string(), "One".to_string()),
                ("b.istio.io".to_string(), "Two".to_string())
            ]
        );
    }

    #[test]
    fn closes_objects_unless_they_preserve_unknown_fields() {
        let schema = to_json_schema(&json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {
                    "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "empty": {"type": "object"}
                }}
            }
        }));
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(
            schema["properties"]["metadata"].get("additionalProperties"),
            None
        );
        assert_eq!(schema["properties"]["kind"], json!({"type": "string"}));
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["additionalProperties"], false);
        assert_eq!(
            spec["properties"]["config"].get("additionalProperties"),
            None
        );
        assert_eq!(
            spec["properties"]["labels"]["additionalProperties"],
            json!({"type": "string"})
        );
        assert_eq!(spec["properties"]["empty"]["additionalProperties"], false);
    }

    #[test]
    fn nullable_and_int_or_string() {
        let schema = to_json_schema(&json!({"type": "object", "properties": {
            "priority": {"type": "integer", "nullable": true},
            "mode": {"type": "string", "enum": ["A", "B"], "nullable": true},
            "port": {"x-kubernetes-int-or-string": true}
        }}));
        let p = &schema["properties"];
        assert_eq!(p["priority"]["type"], json!(["integer", "null"]));
        assert_eq!(p["mode"]["enum"], json!(["A", "B", null]));
        assert_eq!(
            p["port"]["anyOf"],
            json!([{"type": "integer"}, {"type": "string"}])
        );
    }

    #[test]
    fn list_map_duplicates_are_reported_by_index() {
        let schema = json!({"type": "object", "properties": {"env": {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "items": {"type": "object"}
        }}});
        let mut errors = Vec::new();
        check_list_types(
            &schema,
            &json!({"env": [{"name": "a"}, {"name": "b"}, {"name": "a", "value": "x"}]}),
            "spec",
            &mut errors,
        );
        assert_eq!(
            errors,
            vec![FieldError::new(
                "spec.env[2]",
                r#"Duplicate value: {"name":"a"}"#
            )]
        );
    }
}
