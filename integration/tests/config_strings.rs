//! End to end: no `pluginConfig` string can crash a filter's VM (with the
//! combined module a panic takes all four filters of that worker down). Every
//! string in every shipped WasmPlugin's `pluginConfig` is replaced, one at a
//! time, by non-ASCII text and pushed to the running mesh as istiod pushes an
//! edit; each filter takes it or refuses it (Envoy keeps the previous config),
//! traffic flows through it, and no VM ever panics.
//!
//! Run: `MESHWASM_ENVOY=... MESHWASM_DIST=... cargo test -p meshwasm-integration --test config_strings -- --test-threads 1`

use meshwasm_integration::http;
use meshwasm_integration::resources::{self, Resource};
use meshwasm_integration::{Mesh, MeshOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Texts that broke byte slicing (`"é"`: its first byte is no char boundary)
/// or that look like patterns and paths.
const HOSTILE: [&str; 2] = ["é", "/café/*ü"];

/// JSON pointers of every string leaf under `value`.
fn string_leaves(value: &Value, pointer: String, out: &mut Vec<String>) {
    match value {
        Value::String(_) => out.push(pointer),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                string_leaves(item, format!("{pointer}/{index}"), out);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                string_leaves(item, format!("{pointer}/{escaped}"), out);
            }
        }
        _ => {}
    }
}

/// ECDS updates a proxy has processed for `filter`, taken or refused.
fn updates(mesh: &Mesh, proxy: &str, filter: &str) -> u64 {
    ["update_success", "update_rejected"]
        .iter()
        .map(|outcome| {
            mesh.stat(
                proxy,
                &format!("extension_config_discovery.http_filter.{filter}.{outcome}"),
            )
            .unwrap_or(0)
        })
        .sum()
}

/// Pushes `plugin` and waits until every proxy holding it has processed the
/// update; returns how many refused it.
fn push(mesh: &mut Mesh, proxies: &[String], filter: &str, plugin: &Value) -> usize {
    let before: Vec<(String, u64, u64)> = proxies
        .iter()
        .map(|proxy| {
            let rejected = mesh
                .stat(
                    proxy,
                    &format!("extension_config_discovery.http_filter.{filter}.update_rejected"),
                )
                .unwrap_or(0);
            (proxy.clone(), updates(mesh, proxy, filter), rejected)
        })
        .collect();
    let yaml = serde_yaml::to_string(plugin).unwrap();
    mesh.update_plugin(&yaml).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while before
        .iter()
        .any(|(proxy, count, _)| updates(mesh, proxy, filter) <= *count)
    {
        assert!(
            Instant::now() < deadline,
            "{filter}: update not processed:\n{yaml}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    before
        .iter()
        .filter(|(proxy, _, rejected)| {
            mesh.stat(
                proxy,
                &format!("extension_config_discovery.http_filter.{filter}.update_rejected"),
            )
            .unwrap_or(0)
                > *rejected
        })
        .count()
}

/// One order through the ingress (authz, routing, telemetry) and order's
/// sidecar (breaker, routing, telemetry); any status will do.
fn traffic(mesh: &Mesh) -> u16 {
    let token = mint_token::demo_bearer("alice", json!({"user": "é", "beta": true})).unwrap();
    http::post_json(
        &http::agent(),
        &format!("{}/orders", mesh.ready.ingress),
        &json!({"sku": "sku-1", "quantity": 1, "user": "alice"}),
        &[
            ("authorization", &token),
            ("x-user", "u-1"),
            ("x-tenant-id", "t-1"),
        ],
    )
    .unwrap()
    .status
}

#[test]
fn non_ascii_strings_in_every_plugin_config_field_never_panic_a_vm() {
    let mut mesh = Mesh::start(MeshOptions::default()).unwrap();
    let proxy_names: Vec<String> = std::iter::once(mesh_ingress())
        .chain(mesh.ready.workloads.keys().cloned())
        .collect();
    let plugins: Vec<Resource> = resources::load_dir(&MeshOptions::default().manifests)
        .unwrap()
        .into_iter()
        .filter(|resource| resource.kind == "WasmPlugin")
        .collect();
    assert!(plugins.len() >= 4, "shipped WasmPlugins: {}", plugins.len());

    let (mut pushed, mut refused) = (0, 0);
    for plugin in &plugins {
        let filter = mesh
            .istio_release
            .filter_name(&plugin.namespace, &plugin.name);
        let holders: Vec<String> = proxy_names
            .iter()
            .filter(|proxy| updates(&mesh, proxy, &filter) > 0)
            .cloned()
            .collect();
        assert!(!holders.is_empty(), "no proxy runs {filter}");
        let mut leaves = Vec::new();
        string_leaves(
            &plugin.body["spec"]["pluginConfig"],
            "/spec/pluginConfig".to_owned(),
            &mut leaves,
        );
        assert!(
            !leaves.is_empty(),
            "{}: no string in pluginConfig",
            plugin.name
        );
        for leaf in &leaves {
            for text in HOSTILE {
                let mut edited = plugin.body.clone();
                if let Some(slot) = edited.pointer_mut(leaf) {
                    *slot = json!(text);
                }
                refused += push(&mut mesh, &holders, &filter, &edited);
                pushed += holders.len();
                traffic(&mesh);
            }
        }
        push(&mut mesh, &holders, &filter, &plugin.body);
    }
    eprintln!("{pushed} config updates pushed to proxies, {refused} refused");

    for process in mesh.process_names() {
        let log = mesh.log(&process);
        let crashes: Vec<&str> = log
            .lines()
            .filter(|line| {
                // A refused config logs `[critical]` "failed to load", which is
                // no crash; a panic logs `panicked at` and traps the VM.
                line.contains("panicked") || line.contains("RuntimeError")
            })
            .collect();
        assert!(crashes.is_empty(), "{process}: {crashes:#?}");
    }
    // The shipped configs are back, and so is the order flow.
    assert_eq!(traffic(&mesh), 201, "the order flow after the edits");
}

fn mesh_ingress() -> String {
    meshwasm_integration::topology::INGRESS_NAME.to_owned()
}
