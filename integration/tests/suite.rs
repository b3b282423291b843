//! End to end: the combined module `dist/meshwasm.wasm`, which the shipped
//! WasmPlugins point at. The meshwasm plugins of a proxy share one V8 VM per
//! Envoy thread, and a `pluginName` the module does not serve is refused with
//! a log line naming it while Envoy keeps serving.
//!
//! Run: `MESHWASM_ENVOY=... MESHWASM_DIST=... cargo test -p meshwasm-integration --test suite -- --test-threads 1`

use meshwasm_integration::http;
use meshwasm_integration::mesh::repo_root;
use meshwasm_integration::{Mesh, MeshOptions};
use serde_json::json;
use std::time::Duration;

const INGRESS: &str = "istio-ingressgateway";
/// Live V8 VMs of the proxy (a gauge; the same name on Envoy 1.36 and 1.40).
const V8_ACTIVE: &str = "wasm.envoy.wasm.runtime.v8.active";
const COMBINED_URL: &str = "oci://ghcr.io/meshwasm/meshwasm:0.1.0";

fn start(extra: &[String]) -> Mesh {
    let options = MeshOptions {
        extra_manifests: extra.to_vec(),
        ..MeshOptions::default()
    };
    Mesh::start(options).unwrap_or_else(|err| panic!("mesh did not start: {err:#}"))
}

/// VMs one module has in a proxy: a base VM plus one per thread (main and
/// each worker).
fn vms_per_module() -> u64 {
    u64::from(MeshOptions::default().concurrency) + 2
}

/// The WasmPlugins a proxy runs: one ECDS subscription each.
fn wasm_plugins(mesh: &Mesh, proxy: &str) -> usize {
    mesh.stats_matching(
        proxy,
        r"^extension_config_discovery\.http_filter\..*wasmplugin.*\.update_success$",
    )
    .unwrap()
    .values()
    .filter(|count| **count > 0)
    .count()
}

/// The shipped WasmPlugin document `name` from `file`, edited by `edit`.
fn shipped_plugin(file: &str, name: &str, edit: impl Fn(String) -> String) -> String {
    let text =
        std::fs::read_to_string(repo_root().join("wasmplugin-manifests").join(file)).unwrap();
    let document = text
        .split("\n---")
        .find(|doc| doc.contains("kind: WasmPlugin") && doc.contains(&format!("  name: {name}\n")))
        .unwrap_or_else(|| panic!("no WasmPlugin {name} in {file}"));
    assert!(
        document.contains(COMBINED_URL),
        "{name} ships the combined module"
    );
    edit(document.to_owned())
}

#[test]
fn the_meshwasm_plugins_of_a_proxy_share_one_vm_per_thread() {
    // The ingress runs one plugin from its own module, next to two from the combined one.
    let separate = shipped_plugin("wasmplugin-telemetry.yaml", "telemetry-ingress", |doc| {
        doc.replace(COMBINED_URL, "oci://ghcr.io/meshwasm/telemetry:0.1.0")
    });
    let mesh = start(&[separate]);

    // order's sidecar: circuit breaker, routing and telemetry, all from the combined module.
    let plugins = wasm_plugins(&mesh, "order-v1");
    assert!(plugins >= 3, "order-v1 runs {plugins} WasmPlugins");
    assert_eq!(
        mesh.stat("order-v1", V8_ACTIVE).unwrap(),
        vms_per_module(),
        "one VM per thread for {plugins} plugins"
    );
    assert_eq!(wasm_plugins(&mesh, INGRESS), 3);
    assert_eq!(
        mesh.stat(INGRESS, V8_ACTIVE).unwrap(),
        2 * vms_per_module(),
        "the combined module and telemetry.wasm"
    );

    // Every filter still does its work: authz lets the token through, the
    // order reaches inventory and payment through routing and the breaker.
    let token = mint_token::demo_bearer("suite", json!({})).unwrap();
    let order = http::post_json(
        &http::agent(),
        &format!("{}/orders", mesh.ready.ingress),
        &json!({"sku": "sku-1", "quantity": 1, "user": "suite"}),
        &[("authorization", token.as_str())],
    )
    .unwrap();
    assert_eq!(order.status, 201, "{}", order.body);
    let denied = http::post_json(
        &http::agent(),
        &format!("{}/orders", mesh.ready.ingress),
        &json!({"sku": "sku-1", "quantity": 1, "user": "suite"}),
        &[],
    )
    .unwrap();
    assert_eq!(denied.status, 401, "authz from the combined module");
}

#[test]
fn an_unknown_plugin_name_is_refused_and_envoy_keeps_serving() {
    let plugin = |plugin_name: &str| {
        shipped_plugin("wasmplugin-telemetry.yaml", "telemetry-ingress", |doc| {
            doc.replace(
                "pluginName: telemetry\n",
                &format!("pluginName: {plugin_name}\n"),
            )
        })
    };
    let unknown = plugin("telemetree");
    assert!(unknown.contains("pluginName: telemetree"));
    let mut mesh = start(&[unknown]);

    let log = mesh.log(INGRESS);
    assert!(
        log.contains("unknown root id `telemetree`")
            && log.contains("this module serves authz, routing, circuit_breaker"),
        "the log names the root id and the accepted ones:\n{}",
        mesh.dump_logs()
    );
    let filter = format!(
        "extension_config_discovery.http_filter.{}",
        mesh.istio_release
            .filter_name("istio-system", "telemetry-ingress")
    );
    assert_eq!(
        mesh.stat(INGRESS, &format!("{filter}.update_rejected"))
            .unwrap(),
        1
    );
    // Like any refused config: the chain answers 500 until one is accepted;
    // the gateway process lives and the sidecars serve.
    assert_eq!(mesh.ingress_get("/healthz").unwrap().status, 500);
    let admin_ready = http::get(
        &http::agent(),
        &format!("{}/ready", mesh.ready.ingress_admin),
        &[],
    )
    .unwrap();
    assert_eq!(admin_ready.body.trim(), "LIVE");
    assert_eq!(mesh.exited_process(), None);
    assert!(wasm_plugins(&mesh, "order-v1") >= 3);

    // The plugins sharing the gateway's VM are unharmed: with the name fixed,
    // requests pass authz, routing and telemetry again.
    mesh.update_plugin(&plugin("telemetry")).unwrap();
    assert!(
        mesh.ingress_answers_within("/healthz", 200, Duration::from_secs(20)),
        "the fixed pluginName was not picked up"
    );
    assert_eq!(
        mesh.stat(INGRESS, &format!("{filter}.update_success"))
            .unwrap(),
        1
    );
    assert_eq!(mesh.stat(INGRESS, V8_ACTIVE).unwrap(), vms_per_module());
}
