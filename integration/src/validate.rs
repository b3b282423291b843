//! Offline validation of the manifests in `wasmplugin-manifests/`, as close to
//! what `kubectl apply` (API server, strict field validation) would accept as
//! we can get without a cluster.
//!
//! - Istio kinds with a CRD in the CRD folder (see [`locate_crds`]): the whole
//!   object against
//!   the served version's `openAPIV3Schema`, read the way the API server reads
//!   a structural schema (see [`crd`]). CEL rules (`x-kubernetes-validations`)
//!   are NOT evaluated, and neither are istiod's webhook checks.
//! - Istio `Gateway` (its CRD is not in the folder): a typed struct that
//!   rejects unknown fields (see [`gateway`]).
//! - Kubernetes core kinds (Namespace, ServiceAccount, Service, Deployment,
//!   ConfigMap): `k8s-openapi` types plus an unknown-field round trip and a
//!   few API-server rules (see [`kube`]).
//! - Anything else is an error naming the kind.
//!
//! Every object's `metadata` is checked as an `ObjectMeta` (unknown fields,
//! `name` present and DNS-1123).

mod crd;
mod gateway;
mod kube;
mod paths;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

use crd::CrdStore;

pub use crate::resources::manifest_files;

/// Environment variable naming the folder that holds Istio's CRD YAML files.
pub const CRDS_ENV: &str = "MESHWASM_ISTIO_CRDS";

/// Where Istio's CRD schemas are looked for when [`CRDS_ENV`] is unset, in
/// this order: the workspace's `../shared/istio-crds` (one file per kind), then
/// the pinned download of Istio's `crd-all.gen.yaml` that `make istio-crds`
/// verifies and caches under `.tools/istio-crds`.
pub fn default_crds_dirs() -> [PathBuf; 2] {
    let repo = crate::mesh::repo_root();
    let beside = repo.parent().unwrap_or(&repo).join("shared/istio-crds");
    [beside, repo.join(".tools/istio-crds")]
}

/// The CRD folder: [`CRDS_ENV`] when set (used even if it does not exist, so
/// a wrong setting fails loudly), else the first of [`default_crds_dirs`] that
/// exists; `None` when there is none.
pub fn locate_crds() -> Option<PathBuf> {
    match std::env::var_os(CRDS_ENV) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => default_crds_dirs().into_iter().find(|dir| dir.is_dir()),
    }
}

/// How to provide the schemas, for messages when there are none.
pub fn crds_hint() -> String {
    let [shared, download] = default_crds_dirs();
    format!(
        "set {CRDS_ENV} to a folder of Istio CRD YAML files (one per kind, or Istio's \
         crd-all.gen.yaml), or provide {} or run `make istio-crds` (pinned download into {})",
        shared.display(),
        download.display()
    )
}

/// One valid Kubernetes object read from a manifest file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub file: PathBuf,
    /// 1-based position of the document in its file (empty documents count).
    pub index: usize,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    /// The whole object as JSON.
    pub value: Value,
}

impl Document {
    /// `spec`, or `Null` when absent.
    pub fn spec(&self) -> &Value {
        self.value.get("spec").unwrap_or(&Value::Null)
    }

    /// The API group (`""` for the core group).
    pub fn group(&self) -> &str {
        split_api_version(&self.api_version).0
    }
}

/// One problem in one document. Displays as
/// `<file> (document N, <Kind>/<name>): <field path>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub file: PathBuf,
    pub index: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    /// Dotted field path (`spec.match[0].ports[0].number`); `(document)` for
    /// the document as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (document {}, {}/{}): {}: {}",
            self.file.display(),
            self.index,
            self.kind.as_deref().unwrap_or("?"),
            self.name.as_deref().unwrap_or("?"),
            self.field,
            self.message
        )
    }
}

impl std::error::Error for ValidationError {}

/// Field path used for errors about a whole document or file.
pub const WHOLE_DOCUMENT: &str = "(document)";

/// An error found while checking one document, before the file/document
/// context is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// [`locate_crds`], else the first default folder, so that validating without
/// schemas reports the missing folder together with [`crds_hint`].
fn crds_dir_or_hint() -> PathBuf {
    locate_crds().unwrap_or_else(|| {
        let [shared, _] = default_crds_dirs();
        shared
    })
}

/// Validates every manifest file in `dir` (see [`manifest_files`]; not
/// recursive) with the CRD folder from [`locate_crds`].
pub fn validate_dir(dir: &Path) -> Result<Vec<Document>, Vec<ValidationError>> {
    shared_validator(crds_dir_or_hint()).validate_dir(dir)
}

/// Validates one parsed YAML document with the CRD folder from
/// [`locate_crds`]. `index` is the 1-based document number used in
/// messages.
pub fn validate_document(
    file: &Path,
    index: usize,
    yaml: &serde_yaml::Value,
) -> Result<(), Vec<ValidationError>> {
    shared_validator(crds_dir_or_hint())
        .validate_document(file, index, yaml)
        .map(|_| ())
}

/// One validator per CRD folder for the whole process, so that CRDs are
/// parsed and schemas compiled once.
pub fn shared_validator(crds_dir: PathBuf) -> Arc<ManifestValidator> {
    static VALIDATORS: OnceLock<Mutex<HashMap<PathBuf, Arc<ManifestValidator>>>> = OnceLock::new();
    let mut validators = VALIDATORS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(
        validators
            .entry(crds_dir.clone())
            .or_insert_with(|| Arc::new(ManifestValidator::new(crds_dir))),
    )
}

/// Validator with a configurable CRD folder. It caches loaded CRDs and
/// compiled schemas, so reuse one instance for many documents.
pub struct ManifestValidator {
    crds: CrdStore,
}

impl ManifestValidator {
    pub fn new(crds_dir: impl Into<PathBuf>) -> Self {
        Self {
            crds: CrdStore::new(crds_dir.into()),
        }
    }

    /// The CRD folder this validator reads.
    pub fn crds_dir(&self) -> &Path {
        self.crds.dir()
    }

    /// Validates every manifest file directly in `dir` (see
    /// [`manifest_files`]), in file-name order, and returns all documents, or every error found. Two objects
    /// with the same kind, namespace and name are an error too (the second
    /// would silently replace the first on `kubectl apply`).
    pub fn validate_dir(&self, dir: &Path) -> Result<Vec<Document>, Vec<ValidationError>> {
        let files = manifest_files(dir).map_err(|err| {
            let message = format!("{err:#}");
            vec![ValidationError {
                file: dir.to_path_buf(),
                index: 0,
                kind: None,
                name: None,
                field: WHOLE_DOCUMENT.to_string(),
                message,
            }]
        })?;
        let mut documents = Vec::new();
        let mut errors = Vec::new();
        for file in files {
            let (mut docs, mut errs) = self.check_file(&file);
            documents.append(&mut docs);
            errors.append(&mut errs);
        }
        errors.extend(duplicate_objects(&documents));
        if errors.is_empty() {
            Ok(documents)
        } else {
            Err(errors)
        }
    }

    /// Validates every document of one YAML file (empty documents are
    /// skipped, as kubectl does).
    pub fn validate_file(&self, file: &Path) -> Result<Vec<Document>, Vec<ValidationError>> {
        let (documents, errors) = self.check_file(file);
        if errors.is_empty() {
            Ok(documents)
        } else {
            Err(errors)
        }
    }

    /// The valid documents of a file and the errors of the others.
    fn check_file(&self, file: &Path) -> (Vec<Document>, Vec<ValidationError>) {
        let file_error = |index: usize, message: String| ValidationError {
            file: file.to_path_buf(),
            index,
            kind: None,
            name: None,
            field: WHOLE_DOCUMENT.to_string(),
            message,
        };
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                return (
                    Vec::new(),
                    vec![file_error(0, format!("cannot read file: {e}"))],
                )
            }
        };
        let mut documents = Vec::new();
        let mut errors = Vec::new();
        for (position, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let index = position + 1;
            let yaml = match <serde_yaml::Value as serde::Deserialize>::deserialize(de) {
                Ok(yaml) => yaml,
                Err(e) => {
                    // The YAML stream cannot be resumed after a syntax error.
                    errors.push(file_error(index, format!("invalid YAML: {e}")));
                    break;
                }
            };
            if yaml.is_null() {
                continue;
            }
            match self.validate_document(file, index, &yaml) {
                Ok(doc) => documents.push(doc),
                Err(mut errs) => errors.append(&mut errs),
            }
        }
        (documents, errors)
    }

    /// Validates one parsed YAML document; `index` is its 1-based position
    /// in `file`, used in messages.
    pub fn validate_document(
        &self,
        file: &Path,
        index: usize,
        yaml: &serde_yaml::Value,
    ) -> Result<Document, Vec<ValidationError>> {
        let value = serde_json::to_value(yaml);
        let kind = value
            .as_ref()
            .ok()
            .and_then(|v| v.get("kind"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let name = value
            .as_ref()
            .ok()
            .and_then(|v| v.pointer("/metadata/name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let locate = |errors: Vec<FieldError>| -> Vec<ValidationError> {
            errors
                .into_iter()
                .map(|e| ValidationError {
                    file: file.to_path_buf(),
                    index,
                    kind: kind.clone(),
                    name: name.clone(),
                    field: e.field,
                    message: e.message,
                })
                .collect()
        };
        let value = value.map_err(|e| {
            locate(vec![FieldError::new(
                WHOLE_DOCUMENT,
                format!("cannot be represented as JSON: {e}"),
            )])
        })?;
        let (api_version, kind_name) = type_meta(&value).map_err(&locate)?;
        let errors = self.check_object(&api_version, &kind_name, &value);
        if !errors.is_empty() {
            return Err(locate(errors));
        }
        Ok(Document {
            file: file.to_path_buf(),
            index,
            api_version,
            kind: kind_name,
            name: name.unwrap_or_default(),
            namespace: value
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_string),
            value,
        })
    }

    fn check_object(&self, api_version: &str, kind: &str, value: &Value) -> Vec<FieldError> {
        let (group, version) = split_api_version(api_version);
        let mut errors = Vec::new();
        let name_rule = if group.is_empty() && matches!(kind, "Namespace" | "Service") {
            NameRule::Dns1123Label
        } else {
            NameRule::Dns1123Subdomain
        };
        if let Some(kind_errors) = kube::validate(group, version, kind, value) {
            errors.extend(kind_errors);
        } else if group == "networking.istio.io" && kind == "Gateway" {
            errors.extend(gateway::validate(version, value));
        } else if group.ends_with(".istio.io") {
            errors.extend(self.crds.validate(group, version, kind, value));
        } else {
            errors.push(FieldError::new(
                "kind",
                format!(
                    "unknown kind {kind:?} (apiVersion {api_version:?}): this validator knows \
                     {} in the core/apps groups, networking.istio.io Gateway, and the Istio \
                     kinds that have a CRD in {}",
                    kube::KINDS.join(", "),
                    self.crds.dir().display()
                ),
            ));
        }
        errors.extend(kube::validate_metadata(value, name_rule));
        errors
    }
}

/// How `metadata.name` is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    Dns1123Label,
    Dns1123Subdomain,
}

/// `apiVersion` and `kind`, both required strings.
fn type_meta(value: &Value) -> Result<(String, String), Vec<FieldError>> {
    if !value.is_object() {
        return Err(vec![FieldError::new(
            WHOLE_DOCUMENT,
            "a Kubernetes object must be a YAML mapping",
        )]);
    }
    let mut errors = Vec::new();
    let mut field = |name: &str| match value.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            errors.push(FieldError::new(name, "Required value"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(name, "must be a string"));
            None
        }
    };
    let api_version = field("apiVersion");
    let kind = field("kind");
    match (api_version, kind) {
        (Some(a), Some(k)) => Ok((a, k)),
        _ => Err(errors),
    }
}

/// `"apps/v1"` → `("apps", "v1")`, `"v1"` → `("", "v1")`.
fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

fn duplicate_objects(documents: &[Document]) -> Vec<ValidationError> {
    let mut seen: HashMap<(&str, &str, Option<&str>, &str), &Document> = HashMap::new();
    let mut errors = Vec::new();
    for doc in documents {
        let key = (
            doc.group(),
            doc.kind.as_str(),
            doc.namespace.as_deref(),
            doc.name.as_str(),
        );
        if let Some(first) = seen.insert(key, doc) {
            errors.push(ValidationError {
                file: doc.file.clone(),
                index: doc.index,
                kind: Some(doc.kind.clone()),
                name: Some(doc.name.clone()),
                field: "metadata.name".to_string(),
                message: format!(
                    "duplicate object: {} document {} has the same kind, namespace and name",
                    first.file.display(),
                    first.index
                ),
            });
        }
    }
    errors
}
