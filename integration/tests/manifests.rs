//! Validation of `wasmplugin-manifests/` and of the validator itself, against
//! Istio's CRD schemas (found by `validate::locate_crds`) and upstream's own
//! CRD fixtures. Without schemas the tests that need them skip loudly
//! (`meshwasm_integration::skip`); the Kubernetes-kind tests always run.
//!
//! Run: `cargo test -p meshwasm-integration --test manifests`

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshwasm_integration::skip::skip;
use meshwasm_integration::validate::{
    crds_hint, locate_crds, manifest_files, shared_validator, ManifestValidator, ValidationError,
};
use serde_yaml::Value as Yaml;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifests_dir() -> PathBuf {
    repo_root().join("wasmplugin-manifests")
}

/// The validator over Istio's CRD schemas, or `None` after recording that
/// `test` skipped because there are none.
fn istio_validator(test: &str) -> Option<Arc<ManifestValidator>> {
    let dir = locate_crds();
    if dir.is_none() {
        skip(test, "Istio CRD schemas", &crds_hint());
    }
    dir.map(shared_validator)
}

/// A validator for Kubernetes kinds and Istio's Gateway, which never read the
/// CRD folder.
fn kube_validator() -> ManifestValidator {
    ManifestValidator::new("/no-istio-crds-needed")
}

fn yaml(text: &str) -> Yaml {
    serde_yaml::from_str(text).expect("test YAML parses")
}

/// Errors for one inline document, as displayed.
fn errors_for(validator: &ManifestValidator, text: &str) -> Vec<String> {
    match validator.validate_document(Path::new("inline.yaml"), 1, &yaml(text)) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn listing(errors: &[ValidationError]) -> String {
    errors.iter().map(|e| format!("\n  {e}")).collect()
}

// ---------------------------------------------------------------------------
// The repository's manifests

#[test]
fn every_manifest_in_the_folder_validates() {
    let Some(validator) = istio_validator("every_manifest_in_the_folder_validates") else {
        return;
    };
    let documents = validator
        .validate_dir(&manifests_dir())
        .unwrap_or_else(|errors| panic!("invalid manifests:{}", listing(&errors)));
    let files = manifest_files(&manifests_dir()).unwrap();
    for file in &files {
        assert!(
            documents.iter().any(|d| &d.file == file),
            "{} holds no object",
            file.display()
        );
    }
}

/// Istio ships its CRDs as one file, `crd-all.gen.yaml`: next to the folder
/// of one file per kind (`bundle/`), or as the pinned download itself.
#[test]
fn istios_single_file_bundle_validates_the_same_as_one_file_per_kind() {
    let Some(validator) =
        istio_validator("istios_single_file_bundle_validates_the_same_as_one_file_per_kind")
    else {
        return;
    };
    let dir = validator.crds_dir();
    let Some(bundle_dir) = [dir.join("bundle"), dir.to_path_buf()]
        .into_iter()
        .find(|candidate| candidate.join("crd-all.gen.yaml").is_file())
    else {
        skip(
            "istios_single_file_bundle_validates_the_same_as_one_file_per_kind",
            "crd-all.gen.yaml bundle",
            &format!(
                "{} holds no crd-all.gen.yaml nor bundle/crd-all.gen.yaml",
                dir.display()
            ),
        );
        return;
    };
    let bundle = ManifestValidator::new(&bundle_dir);
    let from_folder = validator.validate_dir(&manifests_dir()).unwrap();
    let from_bundle = bundle
        .validate_dir(&manifests_dir())
        .unwrap_or_else(|errors| panic!("{}:{}", bundle_dir.display(), listing(&errors)));
    assert_eq!(from_bundle, from_folder);
    // A resource the bundle rejects the same way as the folder.
    let broken = WASMPLUGIN.replace("  EXTRA", "  pluginConf: {}");
    assert_eq!(
        errors_for(&bundle, &broken),
        errors_for(&validator, &broken)
    );
    assert!(!errors_for(&bundle, &broken).is_empty());
}

#[test]
fn the_istio_objects_of_the_app_are_all_there() {
    let Some(validator) = istio_validator("the_istio_objects_of_the_app_are_all_there") else {
        return;
    };
    let documents = validator
        .validate_dir(&manifests_dir())
        .unwrap_or_else(|e| panic!("{}", listing(&e)));
    let present: BTreeSet<(String, String, String)> = documents
        .iter()
        .map(|d| {
            (
                d.kind.clone(),
                d.namespace.clone().unwrap_or_default(),
                d.name.clone(),
            )
        })
        .collect();
    for (kind, namespace, name) in [
        ("Gateway", "order-app", "order-gateway"),
        ("VirtualService", "order-app", "order-ingress"),
        ("VirtualService", "order-app", "inventory"),
        ("VirtualService", "order-app", "payment"),
        ("DestinationRule", "order-app", "inventory"),
        ("DestinationRule", "order-app", "payment"),
        ("DestinationRule", "order-app", "order"),
        ("PeerAuthentication", "order-app", "default"),
        ("RequestAuthentication", "istio-system", "ingress-jwt"),
        ("AuthorizationPolicy", "order-app", "order"),
        ("AuthorizationPolicy", "order-app", "inventory"),
        ("AuthorizationPolicy", "order-app", "payment"),
    ] {
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        assert!(present.contains(&key), "missing {kind} {namespace}/{name}");
    }
}

#[test]
fn kustomization_lists_exactly_the_yaml_files_of_the_folder() {
    let dir = manifests_dir();
    assert!(
        !dir.join("kustomization.yaml").exists() && !dir.join("kustomization.yml").exists(),
        "use `Kustomization` (no extension): `kubectl apply -f {}` would try to apply a kustomization.yaml",
        dir.display()
    );
    let text = std::fs::read_to_string(dir.join("Kustomization")).expect("Kustomization exists");
    let kustomization: Yaml = serde_yaml::from_str(&text).expect("Kustomization is YAML");
    assert_eq!(kustomization["kind"].as_str(), Some("Kustomization"));
    let listed: Vec<String> = kustomization["resources"]
        .as_sequence()
        .expect("Kustomization has a resources list")
        .iter()
        .map(|r| r.as_str().expect("resources are file names").to_string())
        .collect();
    let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        listed_set.len(),
        "Kustomization lists a file twice: {listed:?}"
    );
    let present: BTreeSet<String> = manifest_files(&dir)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let unlisted: Vec<&String> = present.difference(&listed_set).collect();
    let missing: Vec<&String> = listed_set.difference(&present).collect();
    assert!(
        unlisted.is_empty() && missing.is_empty(),
        "wasmplugin-manifests/Kustomization is out of date:\n  not listed (add to `resources`): {unlisted:?}\n  \
         listed but not in the folder: {missing:?}"
    );
}

#[test]
fn inline_jwks_is_the_demo_key() {
    let Some(validator) = istio_validator("inline_jwks_is_the_demo_key") else {
        return;
    };
    let jwks_file = repo_root().join("integration/demo-keys/demo-jwks.json");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(jwks_file).unwrap()).unwrap();
    let documents = validator
        .validate_dir(&manifests_dir())
        .unwrap_or_else(|e| panic!("{}", listing(&e)));
    let request_auth = documents
        .iter()
        .find(|d| d.kind == "RequestAuthentication")
        .expect("a RequestAuthentication");
    let rule = &request_auth.spec()["jwtRules"][0];
    assert_eq!(rule["issuer"], "https://auth.meshwasm.local");
    assert_eq!(rule["audiences"], serde_json::json!(["order-app"]));
    let inline: serde_json::Value =
        serde_json::from_str(rule["jwks"].as_str().expect("inline jwks string")).unwrap();
    assert_eq!(
        inline, expected,
        "40-security.yaml jwks differs from demo-jwks.json"
    );
    assert_eq!(inline["keys"][0]["kid"], "meshwasm-demo-1");
}

// ---------------------------------------------------------------------------
// Upstream fixtures (istio/api tests/testdata)

fn fixture_documents(validator: &ManifestValidator, name: &str) -> Vec<(usize, Yaml)> {
    let path = validator.crds_dir().join("testdata").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, de)| {
            (
                i + 1,
                <Yaml as serde::Deserialize>::deserialize(de).unwrap(),
            )
        })
        .filter(|(_, doc)| !doc.is_null())
        .collect()
}

const FIXTURES: &[&str] = &["authz", "destinationrule", "peerauth", "reqauth", "wasm"];

#[test]
fn upstream_valid_fixtures_pass() {
    let Some(validator) = istio_validator("upstream_valid_fixtures_pass") else {
        return;
    };
    for fixture in FIXTURES {
        let file = format!("{fixture}-valid.yaml");
        for (index, doc) in fixture_documents(&validator, &file) {
            if let Err(errors) = validator.validate_document(Path::new(&file), index, &doc) {
                panic!(
                    "{file} document {index} should be valid:{}",
                    listing(&errors)
                );
            }
        }
    }
}

/// Expected errors of the invalid fixtures that only a CEL rule
/// (`x-kubernetes-validations`) or a CEL runtime error produces. The
/// validator has no CEL engine, so these documents pass it.
const CEL_ONLY: &[(&str, &str)] = &[
    (
        "Cannot set serviceAccounts with namespaces or principals",
        "CEL rule on AuthorizationPolicy rules[].from[].source",
    ),
    (
        "type conversion error from",
        "CEL `int(key)` on portLevelMtls keys fails at run time",
    ),
    (
        "portLevelMtls requires selector",
        "CEL rule on PeerAuthentication spec",
    ),
    (
        "port must be between 1-65535",
        "CEL rule on portLevelMtls keys",
    ),
    (
        "only one of targetRefs or selector can be set",
        "CEL rule on spec",
    ),
    (
        "cross namespace referencing is not currently supported",
        "CEL rule on targetRef.namespace",
    ),
    ("url must have scheme", "CEL isURL() on jwksUri"),
    (
        "must be a valid duration greater than",
        "CEL duration() on timeout",
    ),
    (
        "url must have schema one of",
        "CEL isURL() on WasmPlugin url",
    ),
    (
        "value may only be set when valueFrom is INLINE",
        "CEL rule on vmConfig.env[]",
    ),
    (
        "wildcard not allowed in label value match",
        "CEL rule on selector.matchLabels values",
    ),
    (
        "wildcard not allowed in label key match",
        "CEL rule on selector.matchLabels keys",
    ),
];

#[test]
fn upstream_invalid_fixtures_fail_with_the_expected_message_except_cel_only_ones() {
    let Some(validator) = istio_validator(
        "upstream_invalid_fixtures_fail_with_the_expected_message_except_cel_only_ones",
    ) else {
        return;
    };
    let mut structural = 0;
    let mut cel_only = 0;
    for fixture in FIXTURES {
        let file = format!("{fixture}-invalid.yaml");
        for (index, mut doc) in fixture_documents(&validator, &file) {
            let expected = doc
                .as_mapping_mut()
                .and_then(|m| m.remove("_err"))
                .and_then(|e| e.as_str().map(str::to_string))
                .unwrap_or_else(|| panic!("{file} document {index} has no _err"));
            let result = validator.validate_document(Path::new(&file), index, &doc);
            if let Some((_, why)) = CEL_ONLY.iter().find(|(err, _)| expected.contains(err)) {
                cel_only += 1;
                if let Err(errors) = result {
                    panic!(
                        "{file} document {index} ({expected}) is CEL-only ({why}) and should pass the \
                         structural checks, but got:{}",
                        listing(&errors)
                    );
                }
                continue;
            }
            structural += 1;
            let errors = match result {
                Ok(_) => panic!("{file} document {index} should fail with {expected:?}"),
                Err(errors) => errors,
            };
            assert!(
                errors.iter().any(|e| e.to_string().contains(&expected)),
                "{file} document {index}: no error contains {expected:?}:{}",
                listing(&errors)
            );
        }
    }
    // Guards against a fixture change silently moving everything to CEL_ONLY.
    assert_eq!((structural, cel_only), (28, 17), "fixture counts changed");
}

// ---------------------------------------------------------------------------
// Targeted negative tests

const WASMPLUGIN: &str = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: authz
  namespace: order-app
spec:
  selector:
    matchLabels:
      app: order
  url: oci://ghcr.io/meshwasm/authz:0.1.0
  phase: AUTHZ
  priority: 10
  failStrategy: FAIL_CLOSE
  pluginConfig:
    any_field: is accepted here
  EXTRA
"#;

fn wasmplugin_with(validator: &ManifestValidator, extra: &str) -> Vec<String> {
    errors_for(validator, &WASMPLUGIN.replace("  EXTRA", extra))
}

#[test]
fn a_correct_wasmplugin_passes() {
    let Some(validator) = istio_validator("a_correct_wasmplugin_passes") else {
        return;
    };
    assert_eq!(wasmplugin_with(&validator, ""), Vec::<String>::new());
}

#[test]
fn unknown_wasmplugin_spec_field_names_the_field() {
    let Some(validator) = istio_validator("unknown_wasmplugin_spec_field_names_the_field") else {
        return;
    };
    let errors = wasmplugin_with(&validator, "  pluginConf: {}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0],
        r#"inline.yaml (document 1, WasmPlugin/authz): spec.pluginConf: unknown field "spec.pluginConf""#
    );
}

#[test]
fn unknown_field_deep_in_a_wasmplugin_is_found() {
    let Some(validator) = istio_validator("unknown_field_deep_in_a_wasmplugin_is_found") else {
        return;
    };
    let errors = wasmplugin_with(
        &validator,
        "  match:\n  - mode: SERVER\n    ports:\n    - numbr: 8080",
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("spec.match[0].ports[0].numbr: unknown field")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("spec.match[0].ports[0].number: Required value")),
        "{errors:?}"
    );
}

#[test]
fn bad_phase_enum_lists_the_supported_values() {
    let Some(validator) = istio_validator("bad_phase_enum_lists_the_supported_values") else {
        return;
    };
    let errors = errors_for(
        &validator,
        &WASMPLUGIN
            .replace("phase: AUTHZ", "phase: AUTHORIZATION")
            .replace("  EXTRA", ""),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(r#"spec.phase: Unsupported value: "AUTHORIZATION": supported values: "UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS""#),
        "{errors:?}"
    );
}

#[test]
fn wrong_type_for_priority_is_reported() {
    let Some(validator) = istio_validator("wrong_type_for_priority_is_reported") else {
        return;
    };
    let errors = errors_for(
        &validator,
        &WASMPLUGIN
            .replace("priority: 10", "priority: high")
            .replace("  EXTRA", ""),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(r#"spec.priority: Invalid value: "high": spec.priority in body must be of type integer: "string""#),
        "{errors:?}"
    );
    // `priority` is nullable in the CRD.
    let errors = errors_for(
        &validator,
        &WASMPLUGIN
            .replace("priority: 10", "priority: null")
            .replace("  EXTRA", ""),
    );
    assert_eq!(errors, Vec::<String>::new());
}

#[test]
fn unknown_top_level_and_metadata_fields_are_errors() {
    let Some(validator) = istio_validator("unknown_top_level_and_metadata_fields_are_errors")
    else {
        return;
    };
    let errors = wasmplugin_with(&validator, "").len();
    assert_eq!(errors, 0);
    let text = WASMPLUGIN
        .replace("  EXTRA", "")
        .replace("metadata:\n", "metdata: {}\nmetadata:\n  labelz: {}\n");
    let errors = errors_for(&validator, &text);
    assert!(
        errors
            .iter()
            .any(|e| e.contains(r#"metdata: unknown field "metdata""#)),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains(r#"metadata.labelz: unknown field"#)),
        "{errors:?}"
    );
}

#[test]
fn bad_names_and_missing_name() {
    let Some(validator) = istio_validator("bad_names_and_missing_name") else {
        return;
    };
    let errors = errors_for(
        &validator,
        &WASMPLUGIN
            .replace("name: authz", "name: Authz_Filter")
            .replace("  EXTRA", ""),
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("metadata.name: Invalid value: \"Authz_Filter\"")),
        "{errors:?}"
    );
    let errors = errors_for(
        &validator,
        &WASMPLUGIN
            .replace("  name: authz\n", "")
            .replace("  EXTRA", ""),
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("metadata.name: Required value")),
        "{errors:?}"
    );
}

#[test]
fn version_not_served_names_the_served_versions() {
    let Some(validator) = istio_validator("version_not_served_names_the_served_versions") else {
        return;
    };
    let errors = errors_for(
        &validator,
        &WASMPLUGIN.replace("v1alpha1", "v1").replace("  EXTRA", ""),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("apiVersion: extensions.istio.io/v1 WasmPlugin is not served; served versions: v1alpha1"),
        "{errors:?}"
    );
}

#[test]
fn virtual_service_oneof_violation_names_the_fields() {
    let Some(validator) = istio_validator("virtual_service_oneof_violation_names_the_fields")
    else {
        return;
    };
    let errors = errors_for(
        &validator,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: [inventory]
  http:
  - match:
    - uri: {exact: /a, prefix: /b}
    route:
    - destination: {host: inventory}
      weight: "90"
"#,
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("spec.http[0].match[0].uri: Invalid value")
                && e.contains("must set at most one of: exact, prefix, regex")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("spec.http[0].route[0].weight")
                && e.contains("must be of type integer")),
        "{errors:?}"
    );
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: inventory-v1
  namespace: order-app
  labels: {app: inventory, version: v1}
spec:
  replicas: 1
  selector:
    matchLabels: {app: inventory, version: v1}
  template:
    metadata:
      labels: {app: inventory, version: v1}
    spec:
      serviceAccountName: inventory
      containers:
      - name: inventory
        image: ghcr.io/meshwasm/order-app:0.1.0
        args: [inventory]
        env:
        - {name: VERSION, value: v1}
        ports:
        - {name: http, containerPort: 8080}
        resources:
          requests: {cpu: 50m, memory: 32Mi}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
"#;

#[test]
fn a_correct_deployment_passes() {
    assert_eq!(
        errors_for(&kube_validator(), DEPLOYMENT),
        Vec::<String>::new()
    );
}

#[test]
fn unknown_field_in_a_deployment_container_names_the_path() {
    let errors = errors_for(
        &kube_validator(),
        &DEPLOYMENT.replace(
            "        args:",
            "        imagePullPolicyy: Always\n        args:",
        ),
    );
    assert_eq!(
        errors,
        [
            r#"inline.yaml (document 1, Deployment/inventory-v1): spec.template.spec.containers[0].imagePullPolicyy: unknown field "spec.template.spec.containers[0].imagePullPolicyy""#
        ]
    );
}

#[test]
fn deployment_type_error_and_selector_mismatch() {
    let errors = errors_for(
        &kube_validator(),
        &DEPLOYMENT.replace("containerPort: 8080", "containerPort: http"),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("spec.template.spec.containers[0].ports[0].containerPort: invalid type"),
        "{errors:?}"
    );
    let errors = errors_for(
        &kube_validator(),
        &DEPLOYMENT.replace(
            "matchLabels: {app: inventory, version: v1}",
            "matchLabels: {app: inventory, version: v2}",
        ),
    );
    assert!(
        errors.iter().any(
            |e| e.contains("spec.template.metadata.labels: Invalid value")
                && e.contains("does not match")
        ),
        "{errors:?}"
    );
}

#[test]
fn service_ports_must_be_named() {
    let service = r#"
apiVersion: v1
kind: Service
metadata: {name: payment, namespace: order-app, labels: {app: payment}}
spec:
  selector: {app: payment}
  ports:
  - {port: 8080, targetPort: 8080}
"#;
    let errors = errors_for(&kube_validator(), service);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("spec.ports[0].name: Required value"),
        "{errors:?}"
    );
    assert_eq!(
        errors_for(
            &kube_validator(),
            &service.replace("{port: 8080", "{name: http, port: 8080")
        ),
        Vec::<String>::new()
    );
}

#[test]
fn gateway_unknown_field_is_named() {
    let errors = errors_for(
        &kube_validator(),
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: order-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    host: ["*"]
"#,
    );
    assert!(
        errors.iter().any(|e| e.starts_with(
            "inline.yaml (document 1, Gateway/order-gateway): spec.servers[0].host: unknown field"
        )),
        "{errors:?}"
    );
}

#[test]
fn unknown_kind_is_named() {
    let Some(validator) = istio_validator("unknown_kind_is_named") else {
        return;
    };
    let errors = errors_for(
        &validator,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(r#"kind: unknown kind "Secret""#),
        "{errors:?}"
    );
    let errors = errors_for(
        &validator,
        "apiVersion: networking.istio.io/v1\nkind: Sidecarr\nmetadata: {name: s}\nspec: {}\n",
    );
    assert!(
        errors[0].contains(r#"unknown kind "Sidecarr" in group "networking.istio.io""#),
        "{errors:?}"
    );
}

#[test]
fn missing_crd_folder_gives_a_clear_error() {
    let validator = ManifestValidator::new("/nonexistent/istio-crds");
    let errors = validator
        .validate_document(
            Path::new("w.yaml"),
            1,
            &yaml(&WASMPLUGIN.replace("  EXTRA", "")),
        )
        .unwrap_err();
    let text = errors[0].to_string();
    assert!(
        text.contains("cannot read the Istio CRD folder /nonexistent/istio-crds"),
        "{text}"
    );
    assert!(text.contains("MESHWASM_ISTIO_CRDS"), "{text}");
}

/// A scratch folder under the target directory, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn folder_errors_name_the_file_document_and_field() {
    let Some(validator) = istio_validator("folder_errors_name_the_file_document_and_field") else {
        return;
    };
    let scratch = ScratchDir::new("manifests-folder-errors");
    let good = WASMPLUGIN.replace("  EXTRA", "");
    // a.yaml: an empty document (counted, skipped), a valid one, an invalid one.
    let bad = good.replace("phase: AUTHZ", "phase: LATE");
    std::fs::write(
        scratch.0.join("a.yaml"),
        format!("---\n---\n{good}\n---\n{bad}"),
    )
    .unwrap();
    // b.yml: the same object again.
    std::fs::write(scratch.0.join("b.yml"), &good).unwrap();
    std::fs::write(scratch.0.join("c.yaml"), "kind: [unclosed").unwrap();
    std::fs::write(scratch.0.join("notes.txt"), "not a manifest").unwrap();
    let errors = validator.validate_dir(&scratch.0).unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let a = scratch.0.join("a.yaml").display().to_string();
    let b = scratch.0.join("b.yml").display().to_string();
    let c = scratch.0.join("c.yaml").display().to_string();
    assert_eq!(text.len(), 3, "{text:#?}");
    assert!(
        text[0].starts_with(&format!(
            "{a} (document 3, WasmPlugin/authz): spec.phase: Unsupported value: \"LATE\""
        )),
        "{text:#?}"
    );
    assert!(
        text[1].starts_with(&format!("{c} (document 1, ?/?): (document): invalid YAML")),
        "{text:#?}"
    );
    assert!(
        text[2].starts_with(&format!(
            "{b} (document 1, WasmPlugin/authz): metadata.name: duplicate object: {a} document 2"
        )),
        "{text:#?}"
    );
}

// ---------------------------------------------------------------------------
// The staged variant (wasmplugin-manifests/staged/)

fn staged_dir() -> PathBuf {
    manifests_dir().join("staged")
}

#[test]
fn the_staged_manifests_validate() {
    let Some(validator) = istio_validator("the_staged_manifests_validate") else {
        return;
    };
    let documents = validator
        .validate_dir(&staged_dir())
        .unwrap_or_else(|errors| panic!("invalid staged manifests:{}", listing(&errors)));
    assert!(documents.len() >= 2, "{documents:?}");
}

/// Every staged WasmPlugin names (`meshwasm.io/stages-of`) the separate
/// plugins it replaces; each stage is exactly that plugin's filter and
/// `pluginConfig`, and the overlay deletes what the stages replace.
#[test]
fn each_stage_is_configured_exactly_as_the_plugin_it_replaces() {
    use meshwasm_integration::resources::{load_dir, Resource};
    use serde_json::Value;
    let plugins = |resources: Vec<Resource>| -> Vec<Resource> {
        resources
            .into_iter()
            .filter(|r| r.kind == "WasmPlugin")
            .collect()
    };
    let separate = plugins(load_dir(&manifests_dir()).unwrap());
    let staged = plugins(load_dir(&staged_dir()).unwrap());
    let filter = |name: &str| name.replace('-', "_");
    let mut replaced = BTreeSet::new();
    for plugin in staged
        .iter()
        .filter(|p| !separate.iter().any(|s| s.id() == p.id()))
    {
        let sources: Vec<&Resource> = plugin
            .body
            .pointer("/metadata/annotations/meshwasm.io~1stages-of")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{} names no plugins it replaces", plugin.id()))
            .split(", ")
            .map(|source| {
                separate
                    .iter()
                    .find(|s| format!("{}/{}", s.namespace, s.name) == source)
                    .unwrap_or_else(|| panic!("{}: no separate plugin {source}", plugin.id()))
            })
            .collect();
        let spec = &plugin.body["spec"];
        let stages: Vec<(String, &Value)> = if spec["pluginName"] == "stages" {
            spec["pluginConfig"]["stages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|stage| (filter(stage["filter"].as_str().unwrap()), &stage["config"]))
                .collect()
        } else {
            vec![(
                filter(spec["pluginName"].as_str().unwrap()),
                &spec["pluginConfig"],
            )]
        };
        assert_eq!(stages.len(), sources.len(), "{}", plugin.id());
        for ((stage_filter, config), source) in stages.iter().zip(&sources) {
            let source_spec = &source.body["spec"];
            assert_eq!(
                *stage_filter,
                filter(source_spec["pluginName"].as_str().unwrap()),
                "{}: stage for {}",
                plugin.id(),
                source.id()
            );
            assert_eq!(
                *config,
                &source_spec["pluginConfig"],
                "{}: config of the stage for {}",
                plugin.id(),
                source.id()
            );
            assert_eq!(spec["url"], source_spec["url"], "{}", plugin.id());
            replaced.insert(source.id());
        }
    }
    let kept: BTreeSet<String> = staged.iter().map(Resource::id).collect();
    for plugin in &separate {
        assert_ne!(
            replaced.contains(&plugin.id()),
            kept.contains(&plugin.id()),
            "{} must be either replaced by stages or kept as is",
            plugin.id()
        );
    }
    assert!(replaced.len() >= 5, "{replaced:?}");
}
