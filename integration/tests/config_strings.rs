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
use std::time::Duration;

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
    let plugins: Vec<Resource> = resources::load_dir(&MeshOptions::default().manifests)
        .unwrap()
        .into_iter()
        .filter(|resource| resource.kind == "WasmPlugin")
        .collect();
    assert!(plugins.len() >= 4, "shipped WasmPlugins: {}", plugins.len());

    let (mut pushed, mut refused) = (0, 0);
    let push = |mesh: &mut Mesh, plugin: &Value| {
        let yaml = serde_yaml::to_string(plugin).unwrap();
        let push = mesh
            .push_plugin(&yaml, Duration::from_secs(20))
            .unwrap_or_else(|err| panic!("{err:#}:\n{yaml}"));
        (push.proxies.len(), push.rejected_by.len())
    };
    for plugin in &plugins {
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
                let (proxies, rejected) = push(&mut mesh, &edited);
                pushed += proxies;
                refused += rejected;
                traffic(&mesh);
            }
        }
        push(&mut mesh, &plugin.body);
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
