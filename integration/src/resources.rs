//! Reads the manifests folder the way `kubectl apply -f DIR` does (every
//! `.yaml`, `.yml` and `.json` file directly in it, multi-document YAML), or
//! for an overlay folder the way `kubectl apply -k DIR` does, into generic
//! resources, and picks out the kinds the local mesh acts on.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The namespace a resource without `metadata.namespace` lands in
/// (`kubectl apply` uses the context's namespace, `default` on a fresh cluster).
pub const DEFAULT_NAMESPACE: &str = "default";
/// Istio's root namespace: its policies apply to proxies in every namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";

#[derive(Debug, Clone)]
pub struct Resource {
    pub source: String,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Position in the order of application: istiod breaks priority ties by
    /// creation time, which locally is the order in which files are applied.
    pub order: usize,
    pub body: Value,
}

impl Resource {
    pub fn from_value(source: String, order: usize, body: Value) -> Result<Self> {
        let text = |pointer: &str| {
            body.pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let kind = text("/kind").with_context(|| format!("{source}: document has no `kind`"))?;
        let name = text("/metadata/name")
            .with_context(|| format!("{source}: {kind} has no `metadata.name`"))?;
        let labels = body
            .pointer("/metadata/labels")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .with_context(|| format!("{source}: {kind}/{name} has malformed labels"))?
            .unwrap_or_default();
        Ok(Self {
            api_version: text("/apiVersion").unwrap_or_default(),
            namespace: text("/metadata/namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            source,
            kind,
            name,
            labels,
            order,
            body,
        })
    }

    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }

    /// `spec` decoded into a typed view, with the resource named on failure.
    pub fn spec<T: for<'de> Deserialize<'de>>(&self) -> Result<T> {
        let spec = self
            .body
            .get("spec")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        serde_json::from_value(spec).with_context(|| {
            format!(
                "{}: {}/{} has a malformed spec",
                self.source, self.kind, self.name
            )
        })
    }

    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// The files `kubectl apply -f DIR` would read, in its (lexical) order.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read manifests folder {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.is_file()
                && matches!(
                    path.extension().and_then(|ext| ext.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Parses one YAML (or JSON) text that may hold several documents.
pub fn parse_documents(source: &str, text: &str, first_order: usize) -> Result<Vec<Resource>> {
    let mut resources = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document)
            .with_context(|| format!("{source}: document {} is not valid YAML", index + 1))?;
        match value {
            Value::Null => continue,
            Value::Object(_) => {
                let label = format!("{source} (document {})", index + 1);
                resources.push(Resource::from_value(
                    label,
                    first_order + resources.len(),
                    value,
                )?);
            }
            _ => bail!("{source}: document {} is not a mapping", index + 1),
        }
    }
    Ok(resources)
}

/// What `kubectl apply` applies from `dir`: for an overlay (a Kustomization
/// that builds on another folder or patches) what `-k` applies, else every
/// manifest file (`-f`).
pub fn load_dir(dir: &Path) -> Result<Vec<Resource>> {
    match Overlay::read(dir)? {
        Some(overlay) => overlay.load(dir),
        None => load_files(dir),
    }
}

fn load_files(dir: &Path) -> Result<Vec<Resource>> {
    let mut resources = Vec::new();
    for file in manifest_files(dir)? {
        append_file(&mut resources, &file)?;
    }
    Ok(resources)
}

fn append_file(resources: &mut Vec<Resource>, file: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let order = resources.len();
    resources.extend(parse_documents(&name, &text, order)?);
    Ok(())
}

/// The subset of kustomize an overlay of our manifests uses: `resources`
/// (files, or folders applied as [`load_dir`] does) and patches that delete
/// a resource (`$patch: delete`). Anything else is refused, not ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Overlay {
    api_version: String,
    kind: String,
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<Patch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    patch: String,
}

impl Overlay {
    fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("Kustomization");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let overlay: Self = serde_yaml::from_str(&text)
            .with_context(|| format!("{}: not a Kustomization the mesh reads", path.display()))?;
        if overlay.kind != "Kustomization"
            || !overlay.api_version.starts_with("kustomize.config.k8s.io/")
        {
            bail!(
                "{}: not a kustomize.config.k8s.io Kustomization",
                path.display()
            );
        }
        let builds_on_folder = overlay.resources.iter().any(|r| dir.join(r).is_dir());
        Ok((builds_on_folder || !overlay.patches.is_empty()).then_some(overlay))
    }

    fn load(&self, dir: &Path) -> Result<Vec<Resource>> {
        let mut resources = Vec::new();
        for entry in &self.resources {
            let path = dir.join(entry);
            if path.is_dir() {
                let order = resources.len();
                resources.extend(load_dir(&path)?.into_iter().map(|mut resource| {
                    resource.order += order;
                    resource
                }));
            } else {
                append_file(&mut resources, &path)?;
            }
        }
        for (index, patch) in self.patches.iter().enumerate() {
            let deleted = parse_documents(&format!("patches[{index}]"), &patch.patch, 0)?;
            for target in deleted {
                if target.body.get("$patch").and_then(Value::as_str) != Some("delete") {
                    bail!(
                        "{}: only `$patch: delete` patches are supported",
                        target.source
                    );
                }
                let before = resources.len();
                resources.retain(|resource| resource.id() != target.id());
                if resources.len() == before {
                    bail!("{}: no resource {} to delete", target.source, target.id());
                }
            }
        }
        Ok(resources)
    }
}

/// Adds `extra` documents; one with the same kind, namespace and name as an
/// existing resource replaces it (what `kubectl apply` of an edit does).
pub fn overlay(resources: &mut Vec<Resource>, extra: Vec<Resource>) {
    for mut resource in extra {
        match resources
            .iter()
            .position(|existing| existing.id() == resource.id())
        {
            Some(index) => {
                resource.order = resources[index].order;
                resources[index] = resource;
            }
            None => {
                resource.order = resources.len();
                resources.push(resource);
            }
        }
    }
}

/// Kubernetes label-selector `matchLabels` semantics: every pair present.
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_with_defaults() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: x, labels: {app: b}}\n";
        let resources = parse_documents("f.yaml", text, 0).unwrap();
        assert_eq!(resources.len(), 2);
        assert_eq!(resources[0].namespace, DEFAULT_NAMESPACE);
        assert_eq!(resources[1].labels["app"], "b");
        assert_eq!(resources[1].order, 1);
    }

    #[test]
    fn document_without_name_is_an_error() {
        let err = parse_documents("f.yaml", "kind: Service\nmetadata: {}\n", 0).unwrap_err();
        assert!(err.to_string().contains("metadata.name"), "{err}");
    }

    #[test]
    fn overlay_replaces_same_identity_and_keeps_its_order() {
        let mut base = parse_documents(
            "a",
            "kind: S\nmetadata: {name: a}\nspec: {v: 1}\n---\nkind: S\nmetadata: {name: b}\n",
            0,
        )
        .unwrap();
        let extra = parse_documents(
            "t",
            "kind: S\nmetadata: {name: a}\nspec: {v: 2}\n---\nkind: S\nmetadata: {name: c}\n",
            0,
        )
        .unwrap();
        overlay(&mut base, extra);
        assert_eq!(base.len(), 3);
        assert_eq!(base[0].body["spec"]["v"], 2);
        assert_eq!(base[0].order, 0);
        assert_eq!(base[2].order, 2);
    }

    #[test]
    fn selector_semantics() {
        let labels: BTreeMap<_, _> = [
            ("app".to_owned(), "x".to_owned()),
            ("version".to_owned(), "v1".to_owned()),
        ]
        .into();
        assert!(labels_match(&BTreeMap::new(), &labels));
        assert!(labels_match(
            &[("app".to_owned(), "x".to_owned())].into(),
            &labels
        ));
        assert!(!labels_match(
            &[("app".to_owned(), "y".to_owned())].into(),
            &labels
        ));
    }
}
