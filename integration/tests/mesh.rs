//! The local mesh on real Envoy: the order flow through every sidecar, trace
//! propagation, and WasmPlugin failure handling as istiod and istio-agent do it.

use meshwasm_integration::http::{self, Response};
use meshwasm_integration::{Mesh, MeshOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn start(extra: &[&str]) -> Mesh {
    let options = MeshOptions {
        extra_manifests: extra.iter().map(|doc| doc.to_string()).collect(),
        ..MeshOptions::default()
    };
    Mesh::start(options).unwrap_or_else(|err| panic!("mesh did not start: {err:#}"))
}

fn bearer() -> String {
    mint_token::demo_bearer("alice", serde_json::json!({})).unwrap()
}

fn place_order(mesh: &Mesh, headers: &[(&str, &str)]) -> Response {
    let auth = bearer();
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    http::post_json(
        &http::agent(),
        &format!("{}/orders", mesh.ready.ingress),
        &json!({"sku": "sku-1", "quantity": 1, "user": "alice"}),
        &all,
    )
    .unwrap()
}

fn inbound_completed(mesh: &Mesh, workload: &str) -> u64 {
    mesh.stat(workload, "cluster.inbound|8080||.upstream_rq_completed")
        .unwrap()
}

/// The JSON access lines an app wrote for `path`.
fn app_requests(mesh: &Mesh, workload: &str, path: &str) -> Vec<Value> {
    mesh.log(&format!("{workload}.app"))
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["path"] == path)
        .collect()
}

#[test]
fn an_order_reaches_order_inventory_and_payment_through_their_sidecars() {
    let mesh = start(&[]);
    let response = place_order(&mesh, &[]);
    assert_eq!(response.status, 201, "{}", response.body);
    let order = response.json().unwrap();
    assert_eq!(order["status"], "confirmed");

    let ingress_to_order = mesh
        .stat(
            "istio-ingressgateway",
            "cluster.outbound|8080||order.order-app.svc.cluster.local.upstream_rq_completed",
        )
        .unwrap();
    assert_eq!(ingress_to_order, 1);
    assert_eq!(inbound_completed(&mesh, "order-v1"), 1);
    assert_eq!(inbound_completed(&mesh, "payment-v1"), 1);
    assert_eq!(
        inbound_completed(&mesh, "inventory-v1") + inbound_completed(&mesh, "inventory-v2"),
        1
    );
    // order's calls left through its sidecar's outbound clusters.
    let to_payment = mesh.stats_matching("order-v1", r"^cluster\.outbound\|8080\|[^|]*\|payment\.order-app\.svc\.cluster\.local\.upstream_rq_completed$").unwrap();
    assert_eq!(to_payment.values().sum::<u64>(), 1, "{to_payment:?}");

    let fetched = http::get(
        &http::agent(),
        &format!(
            "{}/orders/{}",
            mesh.ready.ingress,
            order["id"].as_str().unwrap()
        ),
        &[("authorization", &bearer())],
    )
    .unwrap();
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    assert_eq!(fetched.json().unwrap()["id"], order["id"]);
}

#[test]
fn trace_headers_arrive_at_the_last_hop_unchanged() {
    let mesh = start(&[]);
    let sent = [
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("baggage", "tenant=acme,feature=blue"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
    ];
    let response = place_order(&mesh, &sent);
    assert_eq!(response.status, 201, "{}", response.body);

    let charge = app_requests(&mesh, "payment-v1", "/charge");
    assert_eq!(charge.len(), 1, "payment saw {charge:?}");
    let trace = &charge[0]["trace"];
    for (name, value) in sent {
        if name == "baggage" {
            // Filters may add their own members (the routing lane); ours stay.
            let received = trace[name].as_str().unwrap_or_default();
            for member in value.split(',') {
                assert!(
                    received.split(',').any(|m| m.trim() == member),
                    "baggage member {member} lost: {received}"
                );
            }
        } else {
            assert_eq!(trace[name], value, "{name} changed on the way to payment");
        }
    }
    // One request id for the whole call tree, whatever the gateway chose.
    let request_id = &app_requests(&mesh, "order-v1", "/orders")[0]["trace"]["x-request-id"];
    assert!(request_id.is_string());
    assert_eq!(&trace["x-request-id"], request_id);
    let reserve = app_requests(&mesh, "inventory-v1", "/reserve")
        .into_iter()
        .chain(app_requests(&mesh, "inventory-v2", "/reserve"))
        .next()
        .unwrap();
    assert_eq!(&reserve["trace"]["x-request-id"], request_id);
}

const BROKEN_PLUGIN: &str = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: broken, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  url: URL
  SHA
  FAIL
"#;

fn broken_plugin(url: &str, sha256: Option<&str>, fail_strategy: Option<&str>) -> String {
    BROKEN_PLUGIN
        .replace("URL", url)
        .replace(
            "SHA",
            &sha256.map(|s| format!("sha256: {s}")).unwrap_or_default(),
        )
        .replace(
            "FAIL",
            &fail_strategy
                .map(|f| format!("failStrategy: {f}"))
                .unwrap_or_default(),
        )
}

#[test]
fn an_unfetchable_module_fails_closed_by_default_and_open_when_asked() {
    let closed = start(&[&broken_plugin(
        "oci://ghcr.io/meshwasm/does-not-exist:0.1.0",
        None,
        None,
    )]);
    let response = closed.ingress_get("/healthz").unwrap();
    assert_eq!(
        response.status, 403,
        "fail-closed: istio-agent's deny-all RBAC"
    );
    assert_eq!(response.body, "RBAC: access denied");
    assert!(
        closed
            .warnings
            .iter()
            .any(|w| w.contains("applying deny RBAC filter")),
        "{:?}",
        closed.warnings
    );
    drop(closed);

    let open = start(&[&broken_plugin(
        "oci://ghcr.io/meshwasm/does-not-exist:0.1.0",
        None,
        Some("FAIL_OPEN"),
    )]);
    assert_eq!(
        open.ingress_get("/healthz").unwrap().status,
        200,
        "fail-open: allow-all RBAC, plugin skipped"
    );
}

#[test]
fn a_wrong_sha256_fails_closed_and_the_right_one_loads() {
    let url = "oci://ghcr.io/meshwasm/telemetry:0.1.0";
    let wrong = start(&[&broken_plugin(url, Some(&"0".repeat(64)), None)]);
    assert_eq!(wrong.ingress_get("/healthz").unwrap().status, 403);
    assert!(
        wrong.warnings.iter().any(|w| w.contains("does not match")),
        "{:?}",
        wrong.warnings
    );
    drop(wrong);

    // For oci:// the sha256 is the image manifest digest (tests/oci.rs: the
    // module's own hash fails).
    let module = std::fs::read(MeshOptions::default().dist.join("telemetry.wasm")).unwrap();
    let image = oci_image::build(&module, oci_image::Layout::PluginTar).unwrap();
    let sha = image.digest().trim_start_matches("sha256:").to_owned();
    let right = start(&[&broken_plugin(url, Some(&sha), None)]);
    assert_eq!(right.ingress_get("/healthz").unwrap().status, 200);
    assert!(right.warnings.is_empty(), "{:?}", right.warnings);
}

#[test]
fn a_refused_plugin_config_leaves_envoy_serving_and_a_fixed_one_is_picked_up() {
    let plugin = |config: &str| {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: strict, namespace: istio-system}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  url: oci://ghcr.io/meshwasm/telemetry:0.1.0\n  pluginName: telemetry\n  pluginConfig: {config}\n"
        )
    };
    let mut mesh = start(&[&plugin("{no_such_field: 1}")]);
    // Envoy rejects the ECDS update; the chain answers 500 until a config is accepted.
    assert_eq!(mesh.ingress_get("/healthz").unwrap().status, 500);
    let admin_ready = http::get(
        &http::agent(),
        &format!("{}/ready", mesh.ready.ingress_admin),
        &[],
    )
    .unwrap();
    assert_eq!(admin_ready.body.trim(), "LIVE");
    let filter = format!(
        "extension_config_discovery.http_filter.{}",
        mesh.istio_release.filter_name("istio-system", "strict")
    );
    assert_eq!(
        mesh.stat("istio-ingressgateway", &format!("{filter}.update_rejected"))
            .unwrap(),
        1
    );
    assert!(
        mesh.log("istio-ingressgateway")
            .contains("invalid plugin config at `no_such_field`"),
        "the log names the field"
    );
    // Other proxies are untouched.
    let order_direct = http::get(
        &http::agent(),
        &format!("{}/healthz", mesh.ready.workloads["order-v1"].app),
        &[],
    )
    .unwrap();
    assert_eq!(order_direct.status, 200);

    mesh.update_plugin(&plugin("{}")).unwrap();
    assert!(
        mesh.ingress_answers_within("/healthz", 200, Duration::from_secs(20)),
        "the fixed config was not picked up"
    );
    assert_eq!(
        mesh.stat("istio-ingressgateway", &format!("{filter}.update_success"))
            .unwrap(),
        1
    );
}

#[test]
fn shutdown_leaves_no_process_behind() {
    let mesh = start(&[]);
    let pids = mesh.pids();
    assert_eq!(pids.len(), 9, "4 apps, 4 sidecars, 1 gateway");
    drop(mesh);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
            "process {pid} still running"
        );
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.split_whitespace().nth(2) == Some("Z"))
}

#[test]
fn mesh_up_writes_the_ready_file_and_stops_everything_on_ctrl_c() {
    let dir = std::env::temp_dir().join(format!("mesh-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ready_file = dir.join("ready.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["up", "--ingress-port", &port.to_string()])
        .arg("--ready-file")
        .arg(&ready_file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready_file.exists() {
        assert!(child.try_wait().unwrap().is_none(), "mesh up exited early");
        assert!(Instant::now() < deadline, "no ready file");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready: Value = serde_json::from_slice(&std::fs::read(&ready_file).unwrap()).unwrap();
    assert_eq!(ready["ingress"], format!("http://127.0.0.1:{port}"));
    let workloads: Vec<&str> = ready["workloads"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        workloads,
        vec!["inventory-v1", "inventory-v2", "order-v1", "payment-v1"]
    );
    let admin = ready["workloads"]["payment-v1"]["sidecar_admin"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        http::get(&http::agent(), &format!("{admin}/ready"), &[])
            .unwrap()
            .status,
        200
    );

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "mesh up exited with {status}");
    assert!(
        http::get(&http::agent(), &format!("{admin}/ready"), &[]).is_err(),
        "payment's sidecar still answers"
    );
    assert!(
        http::get(
            &http::agent(),
            &format!("http://127.0.0.1:{port}/healthz"),
            &[]
        )
        .is_err(),
        "the gateway still answers"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// HTTP lets header values carry bytes from 0x80 up (obs-text) and Envoy
/// passes them on; the proxy-wasm SDK's header getters panic on them. One
/// such request through the ingress (authz, routing, telemetry) and order's
/// sidecar (circuit breaker, routing, telemetry) is served, and later
/// requests still are.
#[test]
fn header_values_that_are_not_utf8_crash_no_filter() {
    let mesh = start(&[]);
    let auth = bearer();
    let body = json!({"sku": "sku-1", "quantity": 1, "user": "alice"}).to_string();
    let latin1: &[u8] = b"caf\xe9";
    let status = http::raw_request(
        &mesh.ready.ingress,
        "POST",
        "/orders",
        &[
            ("authorization", auth.as_bytes()),
            ("content-type", b"application/json"),
            ("x-user", latin1),
            ("x-tenant-id", b"\xff\xfe"),
            ("x-note", latin1),
        ],
        &body,
    )
    .unwrap()
    .status;
    assert_eq!(status, 201, "an order with non-UTF-8 header values");

    let mut bad_token = b"Bearer ".to_vec();
    bad_token.extend_from_slice(latin1);
    let status = http::raw_request(
        &mesh.ready.ingress,
        "POST",
        "/orders",
        &[
            ("authorization", &bad_token),
            ("content-type", b"application/json"),
        ],
        &body,
    )
    .unwrap()
    .status;
    assert_eq!(status, 401, "a token that is not UTF-8 is an invalid token");

    let after = place_order(&mesh, &[]);
    assert_eq!(after.status, 201, "{}", after.body);
    for process in mesh.process_names() {
        let log = mesh.log(&process);
        let crashes: Vec<&str> = log
            .lines()
            .filter(|line| {
                line.contains("panicked") || (line.contains("[critical]") && line.contains("wasm"))
            })
            .collect();
        assert!(crashes.is_empty(), "{process}: {crashes:#?}");
    }
}
