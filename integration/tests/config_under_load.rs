//! End to end: configuration changes while orders flow through the mesh at
//! a fixed rate. Every shipped WasmPlugin's `pluginConfig` goes valid →
//! valid and valid → invalid → valid, the JWKS server the authz filter
//! fetches from restarts, and payment fails for a while. A traffic thread
//! records every answer; the test prints each non-2xx with its cause and
//! fails if any is not explained by payment failing (no request may fail
//! because of a config update, valid or refused, or the JWKS restart).
//!
//! It also shows what state an update keeps (see RELIABILITY.md):
//! - breaker state lives in shared data under a hash of the config: a
//!   re-push of the same config keeps an open breaker open, a changed config
//!   starts closed;
//! - authz's verified-token cache starts empty with a changed config;
//! - telemetry's admitted label values (shared data, per proxy) and its
//!   counters survive.
//!
//! Run: `MESHWASM_ENVOY=... MESHWASM_DIST=... cargo test -p meshwasm-integration --test config_under_load -- --test-threads 1`

use meshwasm_integration::http::{self, Response};
use meshwasm_integration::jwks_server::{self, JwksServer};
use meshwasm_integration::prometheus::total;
use meshwasm_integration::resources::{self, Resource};
use meshwasm_integration::{Mesh, MeshOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INGRESS: &str = "istio-ingressgateway";
const PAYMENT: &str = "payment-v1";
const DEMO_JWKS: &str = include_str!("../demo-keys/demo-jwks.json");
/// One order every 50 ms (sent late when an answer takes longer).
const INTERVAL: Duration = Duration::from_millis(50);
const PUSH_TIMEOUT: Duration = Duration::from_secs(20);
const PAYMENT_FAILING: &str = "payment failing";

/// The shipped authz plugin fetching the demo keys from the test's JWKS
/// server (refreshed every 2 s, so a restart is noticed).
fn remote_jwks_authz(shipped: &Resource) -> Value {
    let mut plugin = shipped.body.clone();
    let provider = &mut plugin["spec"]["pluginConfig"]["providers"][0];
    let object = provider.as_object_mut().expect("authz provider");
    object.remove("jwks");
    object.insert("jwks_uri".into(), json!(jwks_server::URI));
    object.insert("jwks_cluster".into(), json!(jwks_server::CLUSTER));
    object.insert("jwks_refetch_interval".into(), json!("1s"));
    object.insert("jwks_cache_duration".into(), json!("2s"));
    plugin
}

/// Per plugin: a valid edit and an invalid one (JSON pointer, value).
fn edits(name: &str) -> ((&'static str, Value), (&'static str, Value)) {
    match name {
        "authz" => (
            ("/spec/pluginConfig/realm", json!("order-app-edited")),
            ("/spec/pluginConfig/providers", json!(5)),
        ),
        "routing-ingress" => (
            (
                "/spec/pluginConfig/rules/2/action/split/seed",
                json!("edited-seed"),
            ),
            ("/spec/pluginConfig/rules", json!("none")),
        ),
        "routing-order" => (
            ("/spec/pluginConfig/lane/accept_baggage", json!(false)),
            ("/spec/pluginConfig/lane", json!(5)),
        ),
        "telemetry" | "telemetry-ingress" => (
            ("/spec/pluginConfig/max_label_values", json!(40)),
            ("/spec/pluginConfig/max_label_values", json!(0)),
        ),
        "circuit-breaker" => (
            ("/spec/pluginConfig/policies/0/open/duration", json!("2s")),
            ("/spec/pluginConfig/policies", json!(5)),
        ),
        other => panic!("no edits for WasmPlugin {other}: add them here"),
    }
}

fn edited(plugin: &Value, (pointer, value): &(&str, Value)) -> Value {
    let mut edited = plugin.clone();
    *edited
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {plugin}")) = value.clone();
    edited
}

/// One answer the traffic thread saw.
struct Answer {
    phase: String,
    status: u16,
    cause: String,
}

/// Why a request did not succeed, from what the client sees: the breaker's
/// header, a problem+json `type` (the filters') or the one order passes on
/// from its upstream, or Envoy's local reply text.
fn cause(response: &Response) -> String {
    if let Some(state) = response.header("x-meshwasm-breaker") {
        return format!("breaker {state}");
    }
    let body: Value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    if let Some(kind) = body["type"].as_str() {
        return kind.to_owned();
    }
    if let Some(upstream) = body["upstream"].as_str() {
        let kind = body["upstream_body"]["type"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| body["upstream_body"].to_string());
        return format!("{upstream} answered {}: {kind}", body["upstream_status"]);
    }
    response.body.chars().take(80).collect()
}

/// One token for the whole run, so authz's cache hits unless a config
/// change empties it.
fn bearer() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| mint_token::demo_bearer("alice", json!({})).expect("demo token"))
}

fn order(ingress: &str, tenant: &str) -> Response {
    http::post_json(
        &http::agent(),
        &format!("{ingress}/orders"),
        &json!({"sku": "sku-1", "quantity": 1, "user": "alice"}),
        &[("authorization", bearer()), ("x-tenant-id", tenant)],
    )
    .expect("order")
}

/// Orders at a fixed rate until dropped, each answer recorded under the
/// phase current when it was sent.
struct Traffic {
    phase: Arc<Mutex<String>>,
    paused: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(ingress: String) -> Self {
        let phase = Arc::new(Mutex::new("steady".to_owned()));
        let paused = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (phase_, paused_, answers_, stop_) = (
            Arc::clone(&phase),
            Arc::clone(&paused),
            Arc::clone(&answers),
            Arc::clone(&stop),
        );
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut sent = 0u32;
            while !stop_.load(Ordering::Relaxed) {
                let due = start + INTERVAL * sent;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                sent += 1;
                if paused_.load(Ordering::Relaxed) {
                    continue;
                }
                let phase = phase_.lock().expect("phase").clone();
                let response = order(&ingress, &format!("tenant-{}", sent % 3));
                answers_.lock().expect("answers").push(Answer {
                    phase,
                    status: response.status,
                    cause: cause(&response),
                });
            }
        });
        Self {
            phase,
            paused,
            answers,
            stop,
            thread: Some(thread),
        }
    }

    fn enter(&self, phase: &str) {
        eprintln!("phase: {phase}");
        *self.phase.lock().expect("phase") = phase.to_owned();
    }

    fn count(&self) -> usize {
        self.answers.lock().expect("answers").len()
    }

    /// Waits until `n` more answers are in.
    fn run_for(&self, n: usize) {
        let target = self.count() + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count() < target {
            assert!(Instant::now() < deadline, "traffic stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
        // Let a request in flight finish.
        std::thread::sleep(INTERVAL * 4);
    }

    fn record(&self, phase: &str, response: &Response) {
        self.answers.lock().expect("answers").push(Answer {
            phase: phase.to_owned(),
            status: response.status,
            cause: cause(response),
        });
    }

    fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("traffic thread");
        }
        std::mem::take(&mut *self.answers.lock().expect("answers"))
    }
}

fn set_payment_faults(mesh: &Mesh, faults: Value) {
    let url = format!("{}/faults", mesh.ready.workloads[PAYMENT].app);
    let response = http::post_json(&http::agent(), &url, &faults, &[]).expect("faults");
    assert_eq!(response.status, 200, "{}", response.body);
}

fn push(mesh: &mut Mesh, plugin: &Value) -> meshwasm_integration::PluginPush {
    let yaml = serde_yaml::to_string(plugin).expect("yaml");
    mesh.push_plugin(&yaml, PUSH_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err:#}\n{yaml}"))
}

fn stat_sum(mesh: &Mesh, proxy: &str, filter: &str, needle: &str) -> u64 {
    mesh.stats_matching(proxy, filter)
        .expect("stats")
        .iter()
        .filter(|(name, _)| name.contains(needle))
        .map(|(_, value)| value)
        .sum()
}

fn token_cache_misses(mesh: &Mesh) -> u64 {
    stat_sum(mesh, INGRESS, "meshwasm_authz_token_cache_total", "miss")
}

#[test]
fn config_changes_under_load_fail_no_request() {
    let mut jwks = JwksServer::start(DEMO_JWKS);
    let shipped: BTreeMap<String, Value> = resources::load_dir(&MeshOptions::default().manifests)
        .expect("manifests")
        .into_iter()
        .filter(|resource| resource.kind == "WasmPlugin")
        .map(|resource| {
            let body = if resource.name == "authz" {
                remote_jwks_authz(&resource)
            } else {
                resource.body.clone()
            };
            (resource.name, body)
        })
        .collect();
    let authz_yaml = serde_yaml::to_string(&shipped["authz"]).expect("yaml");
    let mut mesh = Mesh::start(MeshOptions {
        extra_manifests: vec![jwks.service_entry(), authz_yaml],
        ..MeshOptions::default()
    })
    .unwrap_or_else(|err| panic!("mesh did not start: {err:#}"));
    assert_eq!(order(&mesh.ready.ingress, "tenant-0").status, 201);

    let traffic = Traffic::start(mesh.ready.ingress.clone());
    traffic.run_for(20);
    let mut survival = Vec::new();

    for (name, plugin) in &shipped {
        let (valid, invalid) = edits(name);
        let changed = edited(plugin, &valid);
        let misses = token_cache_misses(&mesh);
        traffic.enter(&format!("{name}: valid -> valid"));
        let taken = push(&mut mesh, &changed);
        assert!(
            taken.rejected_by.is_empty(),
            "{name}: valid edit refused by {:?}",
            taken.rejected_by
        );
        traffic.run_for(10);
        if name == "authz" {
            let after = token_cache_misses(&mesh);
            assert!(
                after > misses,
                "authz's token cache kept its entries across a config change"
            );
            survival.push(format!(
                "authz token cache: {} misses after the config change (the same token was a hit before)",
                after - misses
            ));
        }
        traffic.enter(&format!("{name}: valid -> invalid"));
        let refused = push(&mut mesh, &edited(&changed, &invalid));
        assert_eq!(
            refused.rejected_by, refused.proxies,
            "{name}: every proxy refuses the invalid edit"
        );
        traffic.run_for(10);
        traffic.enter(&format!("{name}: invalid -> valid"));
        let back = push(&mut mesh, plugin);
        assert!(
            back.rejected_by.is_empty(),
            "{name}: shipped config refused by {:?}",
            back.rejected_by
        );
        traffic.run_for(10);
    }

    // Telemetry: admitted tenants and their counters outlive an update.
    let before = mesh.prometheus(INGRESS).expect("stats");
    let tenant_0 = total(
        &before,
        "meshwasm_requests_total",
        &[("tenant", "tenant-0")],
    );
    traffic.enter("telemetry-ingress: one label slot");
    traffic.pause(true);
    let one_slot = edited(
        &shipped["telemetry-ingress"],
        &("/spec/pluginConfig/max_label_values", json!(1)),
    );
    push(&mut mesh, &one_slot);
    traffic.record(
        "telemetry-ingress: one label slot",
        &order(&mesh.ready.ingress, "fresh-tenant"),
    );
    let after = mesh.prometheus(INGRESS).expect("stats");
    assert_eq!(
        total(
            &after,
            "meshwasm_requests_total",
            &[("tenant", "fresh-tenant")]
        ),
        0.0,
        "a new tenant took a slot: the admitted values were reset by the update"
    );
    assert!(total(&after, "meshwasm_requests_total", &[("tenant", "tenant-0")]) >= tenant_0);
    survival.push(format!(
        "telemetry: tenant-0's counter {tenant_0} before the update, {} after; a new tenant folds into `other` \
         (slots kept)",
        total(&after, "meshwasm_requests_total", &[("tenant", "tenant-0")])
    ));
    push(&mut mesh, &shipped["telemetry-ingress"]);
    traffic.pause(false);

    traffic.enter("JWKS server restart");
    let fetches = |mesh: &Mesh, result: &str| {
        stat_sum(mesh, INGRESS, "meshwasm_authz_jwks_fetches_total", result)
    };
    let failed_before = fetches(&mesh, "failure");
    jwks.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fetches(&mesh, "failure") == failed_before {
        assert!(
            Instant::now() < deadline,
            "no JWKS refresh failed while the server was down"
        );
        traffic.run_for(2);
    }
    let succeeded_before = fetches(&mesh, "success");
    jwks.start_again();
    while fetches(&mesh, "success") == succeeded_before {
        assert!(
            Instant::now() < deadline + Duration::from_secs(20),
            "no JWKS refresh after the restart"
        );
        traffic.run_for(2);
    }

    // Payment fails: the breaker on order's sidecar opens.
    traffic.enter(PAYMENT_FAILING);
    traffic.pause(true);
    set_payment_faults(&mesh, json!({"error_rate": 1.0}));
    let mut opened = false;
    for _ in 0..40 {
        let response = order(&mesh.ready.ingress, "tenant-0");
        traffic.record(PAYMENT_FAILING, &response);
        if response.header("x-meshwasm-breaker") == Some("open") {
            opened = true;
            break;
        }
    }
    assert!(opened, "the breaker never opened while payment failed");
    let breaker = shipped["circuit-breaker"].clone();
    push(&mut mesh, &breaker);
    let same = order(&mesh.ready.ingress, "tenant-0");
    traffic.record(PAYMENT_FAILING, &same);
    assert_eq!(
        same.header("x-meshwasm-breaker"),
        Some("open"),
        "open breaker after a re-push of its config"
    );
    push(&mut mesh, &edited(&breaker, &edits("circuit-breaker").0));
    let changed = order(&mesh.ready.ingress, "tenant-0");
    traffic.record(PAYMENT_FAILING, &changed);
    assert_eq!(
        changed.header("x-meshwasm-breaker"),
        None,
        "a changed config starts a closed breaker"
    );
    survival.push(format!(
        "breaker: open after a re-push of the same config ({}), closed after a changed one (payment's failure \
         reached the client: {})",
        cause(&same),
        cause(&changed)
    ));
    traffic.pause(false);
    traffic.run_for(20);
    traffic.enter("payment recovered");
    set_payment_faults(&mesh, json!({"error_rate": 0.0}));
    push(&mut mesh, &breaker);
    let deadline = Instant::now() + Duration::from_secs(40);
    while order(&mesh.ready.ingress, "tenant-0").status != 201 {
        assert!(
            Instant::now() < deadline,
            "orders did not recover after payment did"
        );
        traffic.run_for(5);
    }
    traffic.enter("after recovery");
    traffic.run_for(20);
    let answers = traffic.finish();

    let mut report: BTreeMap<(String, u16, String), usize> = BTreeMap::new();
    for answer in answers.iter().filter(|a| !(200..300).contains(&a.status)) {
        *report
            .entry((answer.phase.clone(), answer.status, answer.cause.clone()))
            .or_default() += 1;
    }
    eprintln!(
        "\n{} requests, {} non-2xx:",
        answers.len(),
        report.values().sum::<usize>()
    );
    for ((phase, status, cause), count) in &report {
        eprintln!("  {count:>4} x {status} in `{phase}`: {cause}");
    }
    eprintln!("state across updates:");
    for line in &survival {
        eprintln!("  {line}");
    }
    let unexplained: Vec<_> = report
        .keys()
        .filter(|(phase, _, _)| phase != PAYMENT_FAILING && phase != "payment recovered")
        .collect();
    assert!(
        unexplained.is_empty(),
        "failures not caused by payment: {unexplained:#?}"
    );
}
