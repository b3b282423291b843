//! `mesh compose`: the local mesh as a Docker Compose project. The same
//! translation as `mesh up` ([`MeshPlan`]) writes every proxy's config, the
//! ECDS files, the certificates and the modules istio-agent would have fetched
//! into the project folder; `compose.yaml` then runs one Envoy container per
//! proxy and one container per app instead of local processes.
//!
//! Every container uses the host's network and the 127.0.0.1 ports of the
//! plan, as the processes do, so the ingress and admin URLs are the same.

use crate::mesh::{self, MeshOptions, MeshPlan, ReadyInfo};
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The official image of the Envoy we test for the default Istio release
/// (1.31 ships Envoy 1.39; the Makefile's `E2E_MATRIX`).
pub const DEFAULT_ENVOY_IMAGE: &str = "envoyproxy/envoy:v1.39.3";
/// The compose variable that picks the image of every Envoy.
pub const ENVOY_IMAGE_VARIABLE: &str = "ENVOY_IMAGE";
pub const COMPOSE_FILE: &str = "compose.yaml";

pub struct ComposeProject {
    pub file: PathBuf,
    pub ready: ReadyInfo,
    /// Each image variable of the compose file with its default
    /// (`ENVOY_IMAGE`, `ORDER_IMAGE`, ...).
    pub image_variables: BTreeMap<String, String>,
    /// Each app image variable with the order-app binary its image runs.
    pub app_binaries: BTreeMap<String, String>,
}

/// Translates the manifests of `options` into a compose project in
/// `options.run_dir` (created; absolute, since the containers mount it).
pub fn write_project(options: &MeshOptions) -> Result<ComposeProject> {
    std::fs::create_dir_all(&options.run_dir)
        .with_context(|| format!("cannot create {}", options.run_dir.display()))?;
    let dir = options.run_dir.canonicalize()?;
    let options = MeshOptions {
        run_dir: dir.clone(),
        ..options.clone()
    };
    let plan = MeshPlan::new(&mesh::load_resources(&options)?, &options)?;
    let (services, image_variables) = services(&plan, &dir);
    let app_binaries = plan
        .apps
        .iter()
        .map(|app| (image_variable(&app.binary), app.binary.clone()))
        .collect();
    let file = dir.join(COMPOSE_FILE);
    let text = format!(
        "# Written by `mesh compose` from {}; see the README's \"Without Kubernetes, with Docker\".\n{}",
        options.manifests.display(),
        serde_yaml::to_string(&json!({"name": "meshwasm", "services": services}))?
    );
    std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    let ready = plan.ready.clone();
    // The modules are fetched (in istio-data/); the registry they came
    // through is not part of the project.
    drop(plan);
    std::fs::remove_dir_all(dir.join("registry"))?;
    Ok(ComposeProject {
        file,
        ready,
        image_variables,
        app_binaries,
    })
}

fn services(plan: &MeshPlan, dir: &Path) -> (Map<String, Value>, BTreeMap<String, String>) {
    let mut services = Map::new();
    let mut image_variables = BTreeMap::from([(
        ENVOY_IMAGE_VARIABLE.to_owned(),
        DEFAULT_ENVOY_IMAGE.to_owned(),
    )]);
    for app in &plan.apps {
        let variable = image_variable(&app.binary);
        let environment: Map<String, Value> = app
            .env
            .iter()
            .map(|(name, value)| (name.clone(), Value::from(escape(value))))
            .collect();
        services.insert(
            app.workload.clone(),
            json!({
                "image": format!("${{{variable}:-{}}}", app.image),
                "network_mode": "host",
                "environment": environment,
            }),
        );
        image_variables.insert(variable, app.image.clone());
    }
    // The configs name the project's files by their host path, so the
    // containers see the folder at that same path.
    let volume = format!("{0}:{0}:ro", dir.display());
    for envoy in &plan.envoys {
        services.insert(
            envoy.name.replace('.', "-"),
            json!({
                "image": format!("${{{ENVOY_IMAGE_VARIABLE}:-{DEFAULT_ENVOY_IMAGE}}}"),
                "network_mode": "host",
                // The official image's entrypoint runs `envoy` with these
                // arguments, as user 101 unless ENVOY_UID is 0: the private
                // keys are readable by their owner only.
                "command": envoy.args.iter().map(|arg| escape(arg)).collect::<Vec<_>>(),
                "environment": {"ENVOY_UID": "0"},
                "volumes": [escape(&volume)],
            }),
        );
    }
    (services, image_variables)
}

/// `ORDER_IMAGE` for the order app.
fn image_variable(binary: &str) -> String {
    format!("{}_IMAGE", binary.to_uppercase().replace('-', "_"))
}

/// Compose interpolates `$` in every value; `$$` is a literal `$`.
fn escape(text: &str) -> String {
    text.replace('$', "$$")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default image follows the Envoy of the default Istio release,
    /// the last pair of the Makefile's E2E_MATRIX.
    #[test]
    fn default_envoy_image_is_the_envoy_of_the_default_istio_release() {
        let makefile = std::fs::read_to_string(mesh::repo_root().join("Makefile")).unwrap();
        let matrix = makefile
            .lines()
            .find_map(|line| line.strip_prefix("E2E_MATRIX ?= "))
            .expect("E2E_MATRIX in the Makefile");
        let (istio, envoy) = matrix
            .split_whitespace()
            .last()
            .and_then(|pair| pair.split_once(':'))
            .unwrap();
        assert_eq!(istio, crate::plugins::IstioRelease::NEWEST.to_string());
        assert_eq!(DEFAULT_ENVOY_IMAGE, format!("envoyproxy/envoy:v{envoy}"));
    }

    #[test]
    fn dollars_are_literal_in_compose_values() {
        assert_eq!(escape("a$b${C}"), "a$$b$${C}");
    }
}
