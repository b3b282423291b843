//! Kubernetes core kinds, checked with `k8s-openapi`'s typed definitions.
//!
//! `k8s-openapi` silently ignores unknown fields, so after deserializing we
//! serialize the object back and report every field of the input that the
//! round trip lost: that is exactly a field the type does not know (a typo,
//! or a field at the wrong level). Fields given as `null` are skipped (the
//! API server treats them as unset). A few API-server rules that matter for
//! the mesh are checked on top (selector matches template labels, container
//! images, Service ports named and in range).

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::paths;
use super::{FieldError, NameRule, WHOLE_DOCUMENT};

/// The core kinds this module validates.
pub const KINDS: &[&str] = &[
    "Namespace",
    "ServiceAccount",
    "Service",
    "Deployment",
    "ConfigMap",
];

/// Validates a core object; `None` when `group`/`kind` is not one of [`KINDS`].
pub fn validate(group: &str, version: &str, kind: &str, value: &Value) -> Option<Vec<FieldError>> {
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let errors = match (group, kind) {
        ("", "Namespace") => typed::<Namespace>(&api_version, value, |_| Vec::new()),
        ("", "ServiceAccount") => typed::<ServiceAccount>(&api_version, value, |_| Vec::new()),
        ("", "Service") => typed::<Service>(&api_version, value, service_rules),
        ("", "ConfigMap") => typed::<ConfigMap>(&api_version, value, config_map_rules),
        ("apps", "Deployment") => typed::<Deployment>(&api_version, value, deployment_rules),
        _ => return None,
    };
    Some(errors)
}

/// Deserializes into `T`, reports type errors with their path, unknown
/// fields (outside `metadata`, see [`validate_metadata`]), then `rules`.
fn typed<T>(api_version: &str, value: &Value, rules: fn(&T) -> Vec<FieldError>) -> Vec<FieldError>
where
    T: k8s_openapi::Resource + DeserializeOwned + Serialize,
{
    if api_version != T::API_VERSION {
        return vec![FieldError::new(
            "apiVersion",
            format!(
                "Unsupported value: {api_version:?}: {} is served as {:?}",
                T::KIND,
                T::API_VERSION
            ),
        )];
    }
    let object: T = match serde_path_to_error::deserialize(value.clone()) {
        Ok(object) => object,
        Err(e) => return vec![deserialize_error(&e)],
    };
    let round_trip = match serde_json::to_value(&object) {
        Ok(v) => v,
        Err(e) => {
            return vec![FieldError::new(
                WHOLE_DOCUMENT,
                format!("cannot re-encode: {e}"),
            )]
        }
    };
    let mut errors = Vec::new();
    if let (Value::Object(input), Value::Object(output)) = (value, &round_trip) {
        for (name, field) in input.iter().filter(|(name, _)| *name != "metadata") {
            match output.get(name) {
                Some(out) => unknown_fields(field, out, name, &mut errors),
                None if field.is_null() => {}
                None => errors.push(unknown_field(name.clone())),
            }
        }
    }
    errors.extend(rules(&object));
    errors
}

fn deserialize_error(e: &serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let field = if path == "." {
        WHOLE_DOCUMENT.to_string()
    } else {
        path
    };
    FieldError::new(field, e.inner().to_string())
}

fn unknown_field(field: String) -> FieldError {
    let message = format!("unknown field {field:?}");
    FieldError::new(field, message)
}

/// Every non-null field of `input` missing in `output`, recursively.
fn unknown_fields(input: &Value, output: &Value, path: &str, errors: &mut Vec<FieldError>) {
    match (input, output) {
        (Value::Object(input), Value::Object(output)) => {
            for (name, field) in input {
                let field_path = paths::child(path, name);
                match output.get(name) {
                    Some(out) => unknown_fields(field, out, &field_path, errors),
                    None if field.is_null() => {}
                    None => errors.push(unknown_field(field_path)),
                }
            }
        }
        (Value::Array(input), Value::Array(output)) => {
            for (i, (item, out)) in input.iter().zip(output).enumerate() {
                unknown_fields(item, out, &paths::index(path, i), errors);
            }
        }
        _ => {}
    }
}

/// `metadata` of any kind: a valid `ObjectMeta` without unknown fields, a
/// DNS-1123 `name`, a DNS-1123 label `namespace`, valid labels.
pub fn validate_metadata(value: &Value, name_rule: NameRule) -> Vec<FieldError> {
    let Some(metadata) = value.get("metadata").filter(|m| !m.is_null()) else {
        return vec![FieldError::new("metadata.name", "Required value")];
    };
    let meta: ObjectMeta = match serde_path_to_error::deserialize(metadata.clone()) {
        Ok(meta) => meta,
        Err(e) => {
            let inner = deserialize_error(&e);
            let field = if inner.field == WHOLE_DOCUMENT {
                "metadata".to_string()
            } else {
                format!("metadata.{}", inner.field)
            };
            return vec![FieldError::new(field, inner.message)];
        }
    };
    let mut errors = Vec::new();
    if let Ok(round_trip) = serde_json::to_value(&meta) {
        unknown_fields(metadata, &round_trip, "metadata", &mut errors);
    }
    match meta.name.as_deref() {
        None | Some("") => errors.push(FieldError::new("metadata.name", "Required value")),
        Some(name) => {
            if let Err(reason) = check_name(name, name_rule) {
                errors.push(FieldError::new(
                    "metadata.name",
                    format!("Invalid value: {name:?}: {reason}"),
                ));
            }
        }
    }
    if let Some(namespace) = meta.namespace.as_deref() {
        if let Err(reason) = check_name(namespace, NameRule::Dns1123Label) {
            errors.push(FieldError::new(
                "metadata.namespace",
                format!("Invalid value: {namespace:?}: {reason}"),
            ));
        }
    }
    for (key, label) in meta.labels.iter().flatten() {
        let field = paths::child("metadata.labels", key);
        if let Err(reason) = check_qualified_name(key) {
            errors.push(FieldError::new(
                field.clone(),
                format!("Invalid value: {key:?}: {reason}"),
            ));
        }
        if !label.is_empty() && !is_label_value(label) {
            errors.push(FieldError::new(
                field,
                format!(
                    "Invalid value: {label:?}: a label value must be at most 63 characters, alphanumeric, \
                     '-', '_' or '.', and start and end with an alphanumeric character"
                ),
            ));
        }
    }
    errors
}

fn check_name(name: &str, rule: NameRule) -> Result<(), String> {
    match rule {
        NameRule::Dns1123Label if !is_dns1123_label(name) => Err(
            "a lowercase RFC 1123 label must be at most 63 characters, consist of lower case \
             alphanumeric characters or '-', and start and end with an alphanumeric character"
                .to_string(),
        ),
        NameRule::Dns1123Subdomain if !is_dns1123_subdomain(name) => Err(
            "a lowercase RFC 1123 subdomain must be at most 253 characters, consist of lower case \
             alphanumeric characters, '-' or '.', and start and end with an alphanumeric character"
                .to_string(),
        ),
        _ => Ok(()),
    }
}

fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Label key: optional DNS-1123 subdomain prefix, `/`, and a name.
fn check_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_dns1123_subdomain(p)) {
        return Err("the prefix of a label key must be a lowercase DNS-1123 subdomain".to_string());
    }
    if name.is_empty() || !is_label_value(name) {
        return Err(
            "the name part of a label key must be 1-63 characters, alphanumeric, '-', '_' or '.', \
             and start and end with an alphanumeric character"
                .to_string(),
        );
    }
    Ok(())
}

fn is_label_value(s: &str) -> bool {
    let bytes = s.as_bytes();
    s.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn deployment_rules(deployment: &Deployment) -> Vec<FieldError> {
    let Some(spec) = &deployment.spec else {
        return vec![FieldError::new("spec", "Required value")];
    };
    let mut errors = Vec::new();
    let selector = &spec.selector;
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector_is_empty = selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty);
    if selector_is_empty {
        errors.push(FieldError::new(
            "spec.selector",
            "Invalid value: empty selector is invalid for deployment",
        ));
    } else {
        match selector_matches(selector, &template_labels) {
            Ok(true) => {}
            Ok(false) => errors.push(FieldError::new(
                "spec.template.metadata.labels",
                format!(
                    "Invalid value: {}: `selector` does not match template `labels`",
                    serde_json::to_string(&template_labels).unwrap_or_default()
                ),
            )),
            Err(e) => errors.push(e),
        }
    }
    let Some(pod) = &spec.template.spec else {
        errors.push(FieldError::new("spec.template.spec", "Required value"));
        return errors;
    };
    if pod.containers.is_empty() {
        errors.push(FieldError::new(
            "spec.template.spec.containers",
            "Required value",
        ));
    }
    let mut names = HashSet::new();
    for (i, container) in pod.containers.iter().enumerate() {
        let path = paths::index("spec.template.spec.containers", i);
        if !is_dns1123_label(&container.name) {
            errors.push(FieldError::new(
                format!("{path}.name"),
                format!(
                    "Invalid value: {:?}: must be a lowercase RFC 1123 label",
                    container.name
                ),
            ));
        }
        if !names.insert(container.name.as_str()) {
            errors.push(FieldError::new(
                format!("{path}.name"),
                format!("Duplicate value: {:?}", container.name),
            ));
        }
        if container.image.as_deref().is_none_or(str::is_empty) {
            errors.push(FieldError::new(format!("{path}.image"), "Required value"));
        }
        for (j, port) in container.ports.iter().flatten().enumerate() {
            let port_path = paths::index(&format!("{path}.ports"), j);
            if !(1..=65535).contains(&port.container_port) {
                errors.push(FieldError::new(
                    format!("{port_path}.containerPort"),
                    format!(
                        "Invalid value: {}: must be between 1 and 65535, inclusive",
                        port.container_port
                    ),
                ));
            }
            if let Some(name) = &port.name {
                if let Err(reason) = check_port_name(name) {
                    errors.push(FieldError::new(
                        format!("{port_path}.name"),
                        format!("Invalid value: {name:?}: {reason}"),
                    ));
                }
            }
        }
    }
    errors
}

/// Evaluates a label selector (matchLabels and matchExpressions) against labels.
fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, FieldError> {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let mut expressions_match = true;
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let value = labels.get(&requirement.key);
        let values = requirement.values.as_deref().unwrap_or_default();
        let matched = match requirement.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => {
                return Err(FieldError::new(
                    format!("spec.selector.matchExpressions[{i}].operator"),
                    format!("Unsupported value: {other:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""),
                ))
            }
        };
        expressions_match &= matched;
    }
    Ok(labels_match && expressions_match)
}

/// IANA service name rules the API server applies to port names.
fn check_port_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = !name.is_empty()
        && name.len() <= 15
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.iter().any(u8::is_ascii_lowercase)
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err("a port name must be at most 15 characters of lowercase letters, digits and '-', contain a letter, \
             and not start or end with '-' or contain '--'"
            .to_string())
    }
}

fn service_rules(service: &Service) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = service.metadata.name.as_deref().unwrap_or_default();
    if name.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        errors.push(FieldError::new(
            "metadata.name",
            format!(
                "Invalid value: {name:?}: a Service name must start with a letter (RFC 1035 label)"
            ),
        ));
    }
    let Some(spec) = &service.spec else {
        return errors;
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let external_name = spec.type_.as_deref() == Some("ExternalName");
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if ports.is_empty() && !external_name && !headless {
        errors.push(FieldError::new("spec.ports", "Required value"));
    }
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let path = paths::index("spec.ports", i);
        match port.name.as_deref() {
            // Istio picks the protocol from the port name (`http`, `http-*`)
            // or appProtocol, and the API server requires names once there
            // is more than one port: name every port.
            None | Some("") => errors.push(FieldError::new(
                format!("{path}.name"),
                "Required value: name every Service port (Istio reads the protocol from it, e.g. `http`)",
            )),
            Some(name) => {
                if let Err(reason) = check_port_name(name) {
                    errors.push(FieldError::new(format!("{path}.name"), format!("Invalid value: {name:?}: {reason}")));
                }
                if !names.insert(name) {
                    errors.push(FieldError::new(format!("{path}.name"), format!("Duplicate value: {name:?}")));
                }
            }
        }
        if !(1..=65535).contains(&port.port) {
            errors.push(FieldError::new(
                format!("{path}.port"),
                format!(
                    "Invalid value: {}: must be between 1 and 65535, inclusive",
                    port.port
                ),
            ));
        }
        match &port.target_port {
            Some(IntOrString::Int(n)) if !(1..=65535).contains(n) => errors.push(FieldError::new(
                format!("{path}.targetPort"),
                format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
            )),
            Some(IntOrString::String(s)) => {
                if let Err(reason) = check_port_name(s) {
                    errors.push(FieldError::new(
                        format!("{path}.targetPort"),
                        format!("Invalid value: {s:?}: {reason}"),
                    ));
                }
            }
            _ => {}
        }
    }
    errors
}

fn config_map_rules(config_map: &ConfigMap) -> Vec<FieldError> {
    let data_keys = config_map.data.iter().flatten().map(|(k, _)| ("data", k));
    let binary_keys = config_map
        .binary_data
        .iter()
        .flatten()
        .map(|(k, _)| ("binaryData", k));
    data_keys
        .chain(binary_keys)
        .filter(|(_, key)| {
            key.is_empty()
                || key.len() > 253
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(|(section, key)| {
            FieldError::new(
                paths::child(section, key),
                format!("Invalid value: {key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(is_dns1123_label("order-app"));
        assert!(!is_dns1123_label("Order"));
        assert!(!is_dns1123_label("-a"));
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(check_qualified_name("app.kubernetes.io/name").is_ok());
        assert!(check_qualified_name("bad key").is_err());
        assert!(check_port_name("http").is_ok());
        assert!(check_port_name("http-metrics-long-name").is_err());
    }

    #[test]
    fn unknown_fields_are_found_at_any_depth_and_nulls_are_ignored() {
        let value = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "order"},
            "spec": {"ports": [{"name": "http", "port": 8080, "protocl": "TCP"}], "selector": null, "bogus": 1}
        });
        let errors = validate("", "v1", "Service", &value).unwrap();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.bogus", "spec.ports[0].protocl"]);
    }

    #[test]
    fn selector_expressions() {
        let labels = BTreeMap::from([("app".to_string(), "order".to_string())]);
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "app", "operator": "In", "values": ["order"]}, {"key": "tier", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        assert_eq!(selector_matches(&selector, &labels), Ok(true));
        let selector: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "payment"}})).unwrap();
        assert_eq!(selector_matches(&selector, &labels), Ok(false));
    }
}
