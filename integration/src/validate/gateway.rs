//! Istio `Gateway` (networking.istio.io). Its CRD is not among the saved
//! schemas, so a typed struct mirrors `networking/v1/gateway.proto` and
//! rejects unknown fields (`serde(deny_unknown_fields)`), with the checks of
//! istiod's `ValidateGateway` that a manifest author is likely to trip over:
//! at least one server, each with hosts and a port 1..65535 with a known
//! protocol and a name.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::paths;
use super::{FieldError, WHOLE_DOCUMENT};

const SERVED_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // Fields exist to be recognised; `spec` is what is checked.
struct GatewayObject {
    api_version: String,
    kind: String,
    /// Checked as an `ObjectMeta` by the caller.
    metadata: Value,
    spec: GatewaySpec,
    status: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // `selector` is only recognised.
struct GatewaySpec {
    #[serde(default)]
    servers: Vec<Server>,
    #[serde(default)]
    selector: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Server {
    port: Option<Port>,
    bind: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    tls: Option<ServerTls>,
    default_endpoint: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Port {
    number: Option<u32>,
    protocol: Option<String>,
    name: Option<String>,
    /// Deprecated in Istio, still accepted.
    #[allow(dead_code)]
    target_port: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ServerTls {
    https_redirect: Option<bool>,
    mode: Option<TlsMode>,
    server_certificate: Option<String>,
    private_key: Option<String>,
    ca_certificates: Option<String>,
    ca_crl: Option<String>,
    credential_name: Option<String>,
    credential_names: Option<Vec<String>>,
    tls_certificates: Option<Vec<TlsCertificate>>,
    subject_alt_names: Option<Vec<String>>,
    verify_certificate_spki: Option<Vec<String>>,
    verify_certificate_hash: Option<Vec<String>>,
    min_protocol_version: Option<TlsVersion>,
    max_protocol_version: Option<TlsVersion>,
    cipher_suites: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct TlsCertificate {
    server_certificate: Option<String>,
    private_key: Option<String>,
    ca_certificates: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum TlsMode {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

#[derive(Deserialize)]
#[allow(clippy::upper_case_acronyms)]
enum TlsVersion {
    #[serde(rename = "TLS_AUTO")]
    Auto,
    #[serde(rename = "TLSV1_0")]
    V1_0,
    #[serde(rename = "TLSV1_1")]
    V1_1,
    #[serde(rename = "TLSV1_2")]
    V1_2,
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

pub fn validate(version: &str, value: &Value) -> Vec<FieldError> {
    if !SERVED_VERSIONS.contains(&version) {
        return vec![FieldError::new(
            "apiVersion",
            format!(
                "networking.istio.io/{version} Gateway is not served; served versions: {}",
                SERVED_VERSIONS.join(", ")
            ),
        )];
    }
    let gateway: GatewayObject = match serde_path_to_error::deserialize(value.clone()) {
        Ok(gateway) => gateway,
        Err(e) => return vec![serde_error(&e)],
    };
    spec_rules(&gateway.spec)
}

/// A serde error at its field path; an unknown field is reported at the
/// field's own path (`spec.servers[0].bogus`), like the API server does.
fn serde_error(e: &serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let message = e.inner().to_string();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((name, _)) = rest.split_once('`') {
            // serde_path_to_error already includes the key when it got that far.
            let field = if path.rsplit(['.', '[']).next() == Some(name) {
                path.clone()
            } else {
                paths::child(&path, name)
            };
            return FieldError::new(
                field.clone(),
                format!("unknown field {field:?} ({message})"),
            );
        }
    }
    let field = if path.is_empty() {
        WHOLE_DOCUMENT.to_string()
    } else {
        path
    };
    FieldError::new(field, message)
}

fn spec_rules(spec: &GatewaySpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if spec.servers.is_empty() {
        errors.push(FieldError::new(
            "spec.servers",
            "Required value: a gateway must have at least one server",
        ));
    }
    for (i, server) in spec.servers.iter().enumerate() {
        let path = paths::index("spec.servers", i);
        if server.hosts.is_empty() || server.hosts.iter().any(String::is_empty) {
            errors.push(FieldError::new(
                format!("{path}.hosts"),
                "Required value: a server must have at least one non-empty host",
            ));
        }
        let Some(port) = &server.port else {
            errors.push(FieldError::new(format!("{path}.port"), "Required value"));
            continue;
        };
        match port.number {
            None => errors.push(FieldError::new(
                format!("{path}.port.number"),
                "Required value",
            )),
            Some(n) if !(1..=65535).contains(&n) => errors.push(FieldError::new(
                format!("{path}.port.number"),
                format!("Invalid value: {n}: must be between 1 and 65535"),
            )),
            Some(_) => {}
        }
        match port.protocol.as_deref() {
            None | Some("") => errors.push(FieldError::new(
                format!("{path}.port.protocol"),
                "Required value",
            )),
            Some(p) if !PROTOCOLS.iter().any(|known| known.eq_ignore_ascii_case(p)) => {
                errors.push(FieldError::new(
                    format!("{path}.port.protocol"),
                    format!(
                        "Unsupported value: {p:?}: supported values: {}",
                        PROTOCOLS.join(", ")
                    ),
                ))
            }
            Some(_) => {}
        }
        if port.name.as_deref().is_none_or(str::is_empty) {
            errors.push(FieldError::new(
                format!("{path}.port.name"),
                "Required value",
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gateway(spec: Value) -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "g"}, "spec": spec})
    }

    #[test]
    fn accepts_a_full_server() {
        let value = gateway(
            json!({"selector": {"istio": "ingressgateway"}, "servers": [{
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*.example.com"],
                "tls": {"mode": "SIMPLE", "credentialName": "cert", "minProtocolVersion": "TLSV1_2"}
            }]}),
        );
        assert_eq!(validate("v1", &value), vec![]);
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let value = gateway(
            json!({"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP", "nmber": 1}, "hosts": ["*"]}]}),
        );
        let errors = validate("v1", &value);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.servers[0].port.nmber");
    }

    #[test]
    fn bad_tls_mode_and_missing_parts() {
        let value = gateway(
            json!({"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"], "tls": {"mode": "STRICT"}}]}),
        );
        let errors = validate("v1", &value);
        assert_eq!(errors[0].field, "spec.servers[0].tls.mode", "{errors:?}");
        let value = gateway(json!({"servers": [{"port": {"number": 0, "protocol": "QUIC"}}]}));
        let fields: Vec<String> = validate("v1", &value)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.servers[0].hosts",
                "spec.servers[0].port.number",
                "spec.servers[0].port.protocol",
                "spec.servers[0].port.name"
            ]
        );
        assert_eq!(validate("v2", &value)[0].field, "apiVersion");
    }
}
