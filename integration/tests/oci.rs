//! Modules delivered as OCI images from a real registry (Debian's
//! docker-registry) and fetched as istio-agent fetches them: the manifest
//! digest as `sha256`, the accepted layouts, pull secrets, pull policy, and a
//! fetch failure as deny-all (FAIL_CLOSE) or allow-all (FAIL_OPEN) RBAC.

use meshwasm_integration::registry::{Registry, REPOSITORY, TAG};
use meshwasm_integration::{http, Mesh, MeshOptions};
use oci_image::{Blob, Image, Layout};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const INGRESS_PROBE: &str = "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: probe, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  pluginName: telemetry
  url: URL
";

/// A plugin on the ingress gateway running telemetry (which passes every
/// request), from `url`, with extra spec lines.
fn probe(url: &str, extra: &[&str]) -> String {
    let mut doc = INGRESS_PROBE.replace("URL", url);
    for line in extra {
        doc.push_str(&format!("  {line}\n"));
    }
    doc
}

fn start(extra: &[String]) -> Mesh {
    let options = MeshOptions {
        extra_manifests: extra.to_vec(),
        ..MeshOptions::default()
    };
    Mesh::start(options).unwrap_or_else(|err| panic!("mesh did not start: {err:#}"))
}

fn dist() -> PathBuf {
    MeshOptions::default().dist
}

fn module(name: &str) -> Vec<u8> {
    std::fs::read(dist().join(format!("{name}.wasm"))).unwrap()
}

fn image(name: &str, layout: Layout) -> Image {
    oci_image::build(&module(name), layout).unwrap()
}

fn hex_digest(image: &Image) -> String {
    image.digest().trim_start_matches("sha256:").to_owned()
}

/// The module file the probe's ECDS resource points Envoy at.
fn probe_module_file(mesh: &Mesh) -> String {
    let path = mesh.run_dir.join("ecds/istio-system.probe.json");
    let ecds: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    ecds["resources"][0]["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Applies the edit and waits until the ingress answers `status`.
fn apply(mesh: &mut Mesh, doc: &str, status: u16) -> Option<String> {
    let warning = mesh.update_plugin(doc).unwrap();
    assert!(
        mesh.ingress_answers_within("/healthz", status, Duration::from_secs(30)),
        "not {status} after applying\n{doc}\nwarning: {warning:?}"
    );
    warning
}

#[test]
fn shipped_manifests_and_published_images_are_pulled_from_the_registry() {
    let mut mesh = start(&[probe(
        &format!("oci://ghcr.io/meshwasm/telemetry:{TAG}"),
        &[],
    )]);
    assert!(
        mesh.warnings.iter().all(|w| !w.contains("RBAC")),
        "{:?}",
        mesh.warnings
    );
    // The shipped WasmPlugins run the combined module, cached under its
    // manifest digest, and the order flow works.
    let combined = hex_digest(&image("meshwasm", Layout::PluginTar));
    let ecds: Vec<String> = std::fs::read_dir(mesh.run_dir.join("ecds"))
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    let combined_users = ecds
        .iter()
        .filter(|e| e.contains(&format!("{combined}.wasm")))
        .count();
    assert!(
        combined_users >= 4,
        "the shipped plugins load {combined}.wasm: {ecds:?}"
    );
    let token = mint_token::demo_bearer("alice", json!({})).unwrap();
    let order = http::post_json(
        &http::agent(),
        &format!("{}/orders", mesh.ready.ingress),
        &json!({"sku": "sku-1", "quantity": 1, "user": "alice"}),
        &[("authorization", token.as_str())],
    )
    .unwrap();
    assert_eq!(order.status, 201, "{}", order.body);

    // A per-filter image.
    assert_eq!(mesh.ingress_get("/healthz").unwrap().status, 200);
    let telemetry = image("telemetry", Layout::PluginTar);
    assert!(probe_module_file(&mesh).ends_with(&format!("{}.wasm", hex_digest(&telemetry))));

    // The two-layer layout, and an index whose linux/amd64 child is taken.
    let wasm_layer = image("telemetry", Layout::WasmLayer);
    mesh.registry
        .push(&format!("{REPOSITORY}/telemetry:wasm-layer"), &wasm_layer)
        .unwrap();
    apply(
        &mut mesh,
        &probe("oci://ghcr.io/meshwasm/telemetry:wasm-layer", &[]),
        200,
    );
    assert!(probe_module_file(&mesh).ends_with(&format!("{}.wasm", hex_digest(&wasm_layer))));
    let other = image("authz", Layout::PluginTar);
    for (tag, image) in [("arm64", &other), ("amd64", &telemetry)] {
        mesh.registry
            .push(&format!("{REPOSITORY}/indexed:{tag}"), image)
            .unwrap();
    }
    let child = |image: &Image, arch: &str| {
        json!({"mediaType": oci_image::OCI_MANIFEST, "digest": image.digest(), "size": image.manifest.len(),
               "platform": {"os": "linux", "architecture": arch}})
    };
    let index = json!({"schemaVersion": 2, "mediaType": oci_image::OCI_INDEX,
                       "manifests": [child(&other, "arm64"), child(&telemetry, "amd64")]});
    mesh.registry
        .push_manifest(
            &format!("{REPOSITORY}/indexed:1"),
            serde_json::to_vec(&index).unwrap(),
            oci_image::OCI_INDEX,
        )
        .unwrap();
    apply(
        &mut mesh,
        &probe("oci://ghcr.io/meshwasm/indexed:1", &[]),
        200,
    );
    assert!(probe_module_file(&mesh).ends_with(&format!("{}.wasm", hex_digest(&telemetry))));

    // `:latest` is pulled again on the next edit after the tag moved;
    // IfNotPresent keeps the module it has.
    let latest = "oci://ghcr.io/meshwasm/moving:latest";
    let combined_image = image("meshwasm", Layout::PluginTar);
    mesh.registry
        .push(&format!("{REPOSITORY}/moving:latest"), &telemetry)
        .unwrap();
    apply(&mut mesh, &probe(latest, &[]), 200);
    assert!(probe_module_file(&mesh).ends_with(&format!("{}.wasm", hex_digest(&telemetry))));
    mesh.registry
        .push(&format!("{REPOSITORY}/moving:latest"), &combined_image)
        .unwrap();
    apply(
        &mut mesh,
        &probe(latest, &["imagePullPolicy: IfNotPresent"]),
        200,
    );
    assert!(
        probe_module_file(&mesh).ends_with(&format!("{}.wasm", hex_digest(&telemetry))),
        "IfNotPresent keeps the cached module"
    );
    apply(&mut mesh, &probe(latest, &[]), 200);
    assert!(
        probe_module_file(&mesh).ends_with(&format!("{combined}.wasm")),
        ":latest is pulled again: {}",
        probe_module_file(&mesh)
    );
}

/// A `kubernetes.io/dockerconfigjson` Secret in istio-system.
fn pull_secret(name: &str, registry: &str, user: &str, password: &str) -> String {
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{user}:{password}"),
    );
    let config = json!({"auths": {registry: {"auth": auth}}}).to_string();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{config}'\n"
    )
}

#[test]
fn every_fetch_failure_denies_through_fail_close_and_passes_through_fail_open() {
    let private_dir = std::env::temp_dir().join(format!("meshwasm-private-{}", std::process::id()));
    let private = Registry::start(
        &private_dir,
        "private-registry",
        Some(("meshwasm", "s3cret")),
    )
    .unwrap();
    let telemetry = image("telemetry", Layout::PluginTar);
    private.push("private/telemetry:1", &telemetry).unwrap();
    let private_url = format!("oci://{}/private/telemetry:1", private.address);
    let mut mesh = start(&[
        probe(&format!("oci://ghcr.io/meshwasm/telemetry:{TAG}"), &[]),
        pull_secret("right-cred", &private.address, "meshwasm", "s3cret"),
        pull_secret("wrong-cred", &private.address, "meshwasm", "guess"),
    ]);
    assert_eq!(mesh.ingress_get("/healthz").unwrap().status, 200);
    // wasm-to-oci / ORAS style: one raw wasm layer.
    let artifact = Image::assemble(
        Blob::new("application/vnd.wasm.config.v0+json", b"{}".to_vec()),
        vec![Blob::new(
            "application/vnd.wasm.content.layer.v1+wasm",
            module("telemetry"),
        )],
    )
    .unwrap();
    mesh.registry
        .push(&format!("{REPOSITORY}/artifact:1"), &artifact)
        .unwrap();
    let file_sha = meshwasm_integration::oci::sha256_hex(&module("telemetry"));
    let down = format!(
        "oci://127.0.0.1:{}/meshwasm/telemetry:{TAG}",
        meshwasm_integration::process::free_ports(1).unwrap()[0]
    );
    let published = format!("oci://ghcr.io/meshwasm/telemetry:{TAG}");
    let cases: Vec<(&str, String, Vec<String>, &str)> = vec![
        (
            "the module's file hash as sha256",
            published.clone(),
            vec![format!("sha256: {file_sha}")],
            "which does not match",
        ),
        (
            "a registry that is down",
            down,
            vec![],
            "could not fetch manifest",
        ),
        (
            "a missing tag",
            "oci://ghcr.io/meshwasm/telemetry:9.9.9".into(),
            vec![],
            "could not fetch manifest",
        ),
        (
            "a single-layer wasm artifact",
            "oci://ghcr.io/meshwasm/artifact:1".into(),
            vec![],
            "number of layers must be 2 but got 1",
        ),
        (
            "a wrong pull secret",
            private_url.clone(),
            vec!["imagePullSecret: wrong-cred".into()],
            "could not fetch manifest",
        ),
        (
            "no pull secret for a private registry",
            private_url.clone(),
            vec![],
            "could not fetch manifest",
        ),
        (
            "a pull secret that does not exist",
            private_url.clone(),
            vec!["imagePullSecret: no-such-secret".into()],
            "missing image pulling secret",
        ),
    ];
    for (what, url, extra, reason) in &cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let closed = apply(&mut mesh, &probe(url, &extra), 403);
        let closed = closed.unwrap_or_else(|| panic!("{what}: no fetch failure"));
        for expected in [
            "WasmPlugin istio-system/probe",
            url.as_str(),
            reason,
            "applying deny RBAC filter",
        ] {
            assert!(
                closed.contains(expected),
                "{what}: {expected:?} not in {closed}"
            );
        }
        let denied = mesh.ingress_get("/healthz").unwrap();
        assert_eq!(denied.body, "RBAC: access denied", "{what}");
        let open = [extra.as_slice(), &["failStrategy: FAIL_OPEN"]].concat();
        let opened = apply(&mut mesh, &probe(url, &open), 200);
        assert!(
            opened.is_some_and(|w| w.contains("applying allow RBAC filter") && w.contains(reason)),
            "{what}"
        );
    }
    // The right secret, the manifest digest as sha256, and `@sha256:` in the URL load.
    let digest = hex_digest(&telemetry);
    for (url, extra) in [
        (
            private_url.clone(),
            "imagePullSecret: right-cred".to_owned(),
        ),
        (published.clone(), format!("sha256: {digest}")),
        (
            format!("oci://ghcr.io/meshwasm/telemetry@sha256:{digest}"),
            String::new(),
        ),
    ] {
        let warning = apply(&mut mesh, &probe(&url, &[&extra]), 200);
        assert_eq!(warning, None, "{url} {extra}");
    }
    drop(private);
    let _ = std::fs::remove_dir_all(private_dir);
}

#[test]
fn make_image_output_pulled_back_by_skopeo_matches_the_modules() {
    if std::process::Command::new("skopeo")
        .arg("--version")
        .output()
        .is_err()
    {
        meshwasm_integration::skip::skip(
            "make_image_output_pulled_back_by_skopeo_matches_the_modules",
            "skopeo",
            "apt-get install skopeo (make test-e2e installs it)",
        );
        return;
    }
    let work = std::env::temp_dir().join(format!("meshwasm-skopeo-{}", std::process::id()));
    let registry = Registry::start(&work.join("registry"), "registry", None).unwrap();
    let bin = MeshOptions::default().app_bin_dir.join("oci-image");
    let target = format!("{}/meshwasm/meshwasm:{TAG}", registry.address);
    let layout = work.join("oci");
    // What `make image IMAGE=...` runs.
    let output = std::process::Command::new(&bin)
        .arg("--layout-dir")
        .arg(&layout)
        .arg(format!(
            "{}={target}",
            dist().join("meshwasm.wasm").display()
        ))
        .arg(dist().join("telemetry.wasm"))
        .output()
        .unwrap_or_else(|err| panic!("{} ({err}): build it with `make apps`", bin.display()));
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let digest = hex_digest(&image("meshwasm", Layout::PluginTar));
    assert!(printed.contains(&format!("sha256: {digest}")), "{printed}");

    let skopeo = |args: &[&str]| {
        let out = std::process::Command::new("skopeo")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{target}"),
    ]);
    assert_eq!(meshwasm_integration::oci::sha256_hex(&raw), digest);
    let pulled = work.join("pulled");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{target}"),
        &format!("dir:{}", pulled.display()),
    ]);
    let layer = only_layer(&pulled);
    let module_bytes = meshwasm_integration::oci::plugin_wasm_from_tar_gz(&layer, 1 << 30).unwrap();
    assert!(
        module_bytes == module("meshwasm"),
        "plugin.wasm differs from dist/meshwasm.wasm"
    );
    // The layout for air-gapped copies, in the two-layer variant.
    let copied = work.join("copied");
    skopeo(&[
        "copy",
        &format!("oci:{}:telemetry-wasm-layer", layout.display()),
        &format!("dir:{}", copied.display()),
    ]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(copied.join("manifest.json")).unwrap()).unwrap();
    let wasm = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mediaType"] == oci_image::WASM_CONTENT_LAYER)
        .unwrap();
    let blob = std::fs::read(
        copied.join(
            wasm["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:"),
        ),
    )
    .unwrap();
    assert!(
        blob == module("telemetry"),
        "the wasm layer differs from dist/telemetry.wasm"
    );
    drop(registry);
    let _ = std::fs::remove_dir_all(work);
}

/// The one layer blob of a `skopeo copy ... dir:` folder.
fn only_layer(dir: &Path) -> Vec<u8> {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let [layer] = manifest["layers"].as_array().unwrap().as_slice() else {
        panic!("one layer expected: {manifest}");
    };
    std::fs::read(
        dir.join(
            layer["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:"),
        ),
    )
    .unwrap()
}
