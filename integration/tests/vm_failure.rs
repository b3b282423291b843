//! End to end: what each WasmPlugin `failStrategy` does when a filter's VM
//! crashes at run time. A test-only module (`integration/trap-filter`, built
//! by `make test-e2e`, never shipped) traps on a request carrying `x-trap`
//! and otherwise adds `x-trap-filter-served: <plugin>=<requests it served
//! since its VM started>` to the answer.
//! It runs first on the ingress gateway (one worker, so every request meets
//! the same VM):
//!
//! - the crashing request fails with 503 whatever the strategy;
//! - FAIL_CLOSE (Envoy FAIL_CLOSED): every later request fails with 503;
//! - FAIL_OPEN: later requests pass without the filter;
//! - FAIL_RELOAD (Istio 1.27+): 503 until Envoy has started a new VM, then
//!   the filter serves again, counting from 1.
//!
//! Plugins that share a VM (same module, no `vm_id`: the combined module's
//! four filters) share its crash: a FAIL_CLOSE plugin next to a crashing
//! FAIL_OPEN one fails closed; a FAIL_RELOAD one gets a new VM of its own
//! while the FAIL_OPEN one stays bypassed.
//!
//! Run: `cargo build --profile wasm-release --target wasm32-wasip1 -p test-trap-filter`, then
//! `MESHWASM_ENVOY=... MESHWASM_DIST=... cargo test -p meshwasm-integration --test vm_failure -- --test-threads 1`

use meshwasm_integration::http::{self, Response};
use meshwasm_integration::mesh::repo_root;
use meshwasm_integration::{Mesh, MeshOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SERVED: &str = "x-trap-filter-served";
/// Live V8 VMs of the proxy (as in tests/suite.rs).
const V8_CREATED: &str = "wasm.envoy.wasm.runtime.v8.created";
const INGRESS: &str = "istio-ingressgateway";

/// The trap module, from `MESHWASM_TRAP_WASM` or the workspace's wasm build.
fn trap_module() -> PathBuf {
    let path = std::env::var_os("MESHWASM_TRAP_WASM").map_or_else(
        || repo_root().join("target/wasm32-wasip1/wasm-release/test_trap_filter.wasm"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} missing: `cargo build --profile wasm-release --target wasm32-wasip1 -p test-trap-filter` \
         (make test-e2e builds it)",
        path.display()
    );
    path
}

/// A WasmPlugin of the trap module on the ingress gateway, first in its chain.
fn trap_plugin(name: &str, fail_strategy: &str, priority: i32) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: istio-system}}\n\
         spec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  url: file://{}\n  phase: AUTHN\n  \
         priority: {priority}\n  failStrategy: {fail_strategy}\n",
        trap_module().display()
    )
}

fn start(plugins: &[String]) -> Mesh {
    let options = MeshOptions {
        extra_manifests: plugins.to_vec(),
        concurrency: 1,
        ..MeshOptions::default()
    };
    Mesh::start(options).unwrap_or_else(|err| panic!("mesh did not start: {err:#}"))
}

fn healthz(mesh: &Mesh, trap: bool) -> Response {
    let headers: &[(&str, &str)] = if trap { &[("x-trap", "1")] } else { &[] };
    http::get(
        &http::agent(),
        &format!("{}/healthz", mesh.ready.ingress),
        headers,
    )
    .unwrap()
}

/// Requests the plugin `name` (of istio-system) says it has served, if it
/// saw this one.
fn served(mesh: &Mesh, response: &Response, name: &str) -> Option<u64> {
    let plugin = mesh.istio_release.plugin_name("istio-system", name);
    response
        .headers
        .iter()
        .filter(|(header, _)| header.eq_ignore_ascii_case(SERVED))
        .find_map(|(_, value)| value.strip_prefix(&format!("{plugin}="))?.parse().ok())
}

/// Status and what the `trap` plugin served, for assertions.
fn seen(mesh: &Mesh, response: &Response) -> (u16, Option<u64>) {
    (response.status, served(mesh, response, "trap"))
}

/// The crash as the gateway's log records it.
fn assert_crash_logged(mesh: &Mesh) {
    let log = mesh.log(INGRESS);
    assert!(
        log.lines()
            .any(|line| line.contains("unreachable") || line.contains("RuntimeError")),
        "no VM crash in the gateway's log"
    );
}

/// Crashes the VM. Whatever the strategy, the request it crashed in fails
/// with 503.
fn crash(mesh: &Mesh) {
    assert_eq!(seen(mesh, &healthz(mesh, false)), (200, Some(1)), "before");
    let crashed = healthz(mesh, true);
    assert_eq!(
        crashed.status, 503,
        "the crashing request: {}",
        crashed.body
    );
    assert_crash_logged(mesh);
}

/// The next five requests get `status`, none of them through the trap filter.
fn assert_next_answers(mesh: &Mesh, status: u16) {
    for attempt in 0..5 {
        let after = healthz(mesh, false);
        assert_eq!(
            seen(mesh, &after),
            (status, None),
            "request {attempt} after the crash: {}",
            after.body
        );
    }
}

#[test]
fn fail_close_keeps_failing_after_a_crash() {
    let mesh = start(&[trap_plugin("trap", "FAIL_CLOSE", 1000)]);
    crash(&mesh);
    assert_next_answers(&mesh, 503);
}

#[test]
fn fail_open_passes_without_the_filter_after_a_crash() {
    let mesh = start(&[trap_plugin("trap", "FAIL_OPEN", 1000)]);
    crash(&mesh);
    assert_next_answers(&mesh, 200);
}

/// Polls until `plugin` serves from a fresh VM (its first request there);
/// returns the statuses seen until then.
fn await_fresh_vm(mesh: &Mesh, plugin: &str) -> Vec<u16> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answers = Vec::new();
    loop {
        let after = healthz(mesh, false);
        answers.push(after.status);
        if (after.status, served(mesh, &after, plugin)) == (200, Some(1)) {
            return answers;
        }
        assert!(
            Instant::now() < deadline,
            "no reloaded VM served within 30 s; answers after the crash: {answers:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A mesh whose `trap` plugin (FAIL_OPEN) shares its VM with `neighbour`
/// (same module and VM config, no vm_id, as the combined module's filters),
/// after `trap` crashed it.
fn crashed_next_to(neighbour_strategy: &str) -> Mesh {
    let mesh = start(&[
        trap_plugin("trap", "FAIL_OPEN", 1000),
        trap_plugin("neighbour", neighbour_strategy, 999),
    ]);
    crash(&mesh);
    mesh
}

#[test]
fn fail_reload_serves_again_from_a_new_vm() {
    let mesh = start(&[trap_plugin("trap", "FAIL_RELOAD", 1000)]);
    let vms_before = mesh.stat(INGRESS, V8_CREATED).unwrap();
    crash(&mesh);
    let answers = await_fresh_vm(&mesh, "trap");
    eprintln!("FAIL_RELOAD: {answers:?} after the crash until the new VM served");
    let vms_after = mesh.stat(INGRESS, V8_CREATED).unwrap();
    assert!(
        vms_after > vms_before,
        "no new VM ({vms_before} created before, {vms_after} after)"
    );
    // A second crash reloads again.
    assert_eq!(healthz(&mesh, true).status, 503);
    await_fresh_vm(&mesh, "trap");
}

#[test]
fn a_fail_close_plugin_sharing_a_crashed_vm_fails_closed() {
    let mesh = crashed_next_to("FAIL_CLOSE");
    assert_next_answers(&mesh, 503);
}

#[test]
fn a_reloading_neighbour_gets_a_new_vm_the_fail_open_plugin_stays_bypassed() {
    let mesh = crashed_next_to("FAIL_RELOAD");
    let answers = await_fresh_vm(&mesh, "neighbour");
    eprintln!("shared VM, FAIL_OPEN + FAIL_RELOAD: {answers:?} after the crash");
    for _ in 0..3 {
        let after = healthz(&mesh, false);
        assert_eq!(after.status, 200);
        assert_eq!(served(&mesh, &after, "trap"), None, "{:?}", after.headers);
    }
}
