//! End to end: Istio security in the local mesh on real Envoy. The shipped
//! `40-security.yaml` (STRICT mTLS in order-app, JWT checks at the ingress,
//! least-privilege AuthorizationPolicies), PeerAuthentication modes and their
//! precedence, RequestAuthentication + AuthorizationPolicy at the ingress, and
//! the same decisions from Istio's native filters and from our authz filter.
//!
//! Run: `MESHWASM_ENVOY=... MESHWASM_DIST=... cargo test -p meshwasm-integration --test security -- --test-threads 1`

use meshwasm_integration::http::{self, Response};
use meshwasm_integration::{Mesh, MeshOptions};
use mint_token::Mint;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const ORDER: &str = "order-v1";
const INVENTORY: &str = "inventory-v1";
const PAYMENT: &str = "payment-v1";
const DENIED: &str = "RBAC: access denied";

fn start(extra: &[&str]) -> Mesh {
    Mesh::start(MeshOptions {
        extra_manifests: extra.iter().map(|s| (*s).to_owned()).collect(),
        ..MeshOptions::default()
    })
    .unwrap()
}

fn listener(mesh: &Mesh, proxy: &str, name: &str) -> String {
    mesh.listener_address(proxy, name).unwrap()
}

fn inbound(mesh: &Mesh, proxy: &str) -> String {
    listener(mesh, proxy, "virtualInbound")
}

/// One plaintext HTTP/1.1 request to `address` with `host`; `Err` when the
/// connection is refused or closed without an answer.
fn plaintext(
    address: &str,
    method: &str,
    host: &str,
    path: &str,
    body: &str,
) -> Result<Response, String> {
    let mut stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    // A denial may come before Envoy read the body: it then closes with
    // unread data (a reset) after the answer, which is kept.
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    if answer.is_empty() {
        read.map_err(|e| e.to_string())?;
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no answer: {answer:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(Response {
        status,
        headers: Vec::new(),
        body: body.to_owned(),
    })
}

/// A call made from `proxy`'s app: through its sidecar's outbound listener
/// (the app's HTTP proxy), so it leaves with that workload's identity.
fn from_workload(
    mesh: &Mesh,
    proxy: &str,
    method: &str,
    host: &str,
    path: &str,
    body: &str,
) -> Response {
    let outbound = listener(mesh, proxy, "0.0.0.0_8080");
    plaintext(&outbound, method, host, path, body).unwrap()
}

fn bearer(claims: Value) -> String {
    format!(
        "Bearer {}",
        Mint::demo("alice")
            .unwrap()
            .claims(claims)
            .unwrap()
            .sign()
            .unwrap()
    )
}

fn place_order(mesh: &Mesh, authorization: &str) -> Response {
    http::send(
        &http::agent(),
        "POST",
        &format!("{}/orders", mesh.ready.ingress),
        &json!({"sku": "sku-1", "quantity": 1, "user": "e2e"}).to_string(),
        &[
            ("content-type", "application/json"),
            ("authorization", authorization),
        ],
    )
    .unwrap()
}

fn handshakes(mesh: &Mesh, proxy: &str) -> u64 {
    let address = inbound(mesh, proxy);
    mesh.stat(
        proxy,
        &format!("listener.{}.ssl.handshake", address.replace(':', "_")),
    )
    .unwrap()
}

fn assert_denied(response: &Response, what: &str) {
    assert_eq!(
        (response.status, response.body.as_str()),
        (403, DENIED),
        "{what}"
    );
}

/// The gateway may also route /orders/stock/<sku> straight to inventory's
/// /inventory/<sku> (the gateway itself then calls inventory, past the authz
/// plugin, which allows /orders* with a token).
const INGRESS_TO_INVENTORY: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: order-ingress, namespace: order-app}
spec:
  hosts: ["*"]
  gateways: [order-gateway]
  http:
  - name: inventory-direct
    match: [{uri: {prefix: /orders/stock/}}]
    rewrite: {uri: /inventory/}
    route: [{destination: {host: inventory.order-app.svc.cluster.local, port: {number: 8080}}}]
  - name: orders
    match: [{uri: {prefix: /orders}}, {uri: {exact: /healthz}}]
    route: [{destination: {host: order.order-app.svc.cluster.local, port: {number: 8080}}}]
"#;

/// DENY beats ALLOW on order; a dry-run DENY only counts.
const ORDER_DENY_AND_DRY_RUN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: order-deny-blocked, namespace: order-app}
spec:
  selector: {matchLabels: {app: order}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/orders/blocked*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: order-deny-trial
  namespace: order-app
  annotations: {istio.io/dry-run: "true"}
spec:
  selector: {matchLabels: {app: order}}
  action: DENY
  rules: [{when: [{key: "request.headers[x-trial]", values: ["deny-me"]}]}]
"#;

#[test]
fn shipped_security_strict_mtls_and_least_privilege() {
    let mesh = start(&[INGRESS_TO_INVENTORY, ORDER_DENY_AND_DRY_RUN]);
    let alice = bearer(json!({}));

    // The order flow runs over mTLS on every hop.
    let placed = place_order(&mesh, &alice);
    assert_eq!(placed.status, 201, "{}", placed.body);
    for proxy in [ORDER, INVENTORY, PAYMENT] {
        let inventory_hits = if proxy == INVENTORY {
            handshakes(&mesh, INVENTORY) + handshakes(&mesh, "inventory-v2")
        } else {
            handshakes(&mesh, proxy)
        };
        assert!(
            inventory_hits >= 1,
            "{proxy}: no mTLS handshake on its inbound listener"
        );
    }

    // STRICT: a plaintext client (no sidecar) is refused by every sidecar.
    for proxy in [ORDER, INVENTORY, PAYMENT] {
        let refused = plaintext(&inbound(&mesh, proxy), "GET", "x", "/healthz", "");
        assert!(
            refused.is_err(),
            "{proxy} answered plaintext: {:?}",
            refused.map(|r| (r.status, r.body))
        );
    }

    // /healthz is open to any mesh caller; order is only for the gateway.
    assert_eq!(mesh.ingress_get("/healthz").unwrap().status, 200);
    let health = from_workload(&mesh, PAYMENT, "GET", "order:8080", "/healthz", "");
    assert_eq!(health.status, 200, "{}", health.body);
    let from_payment = from_workload(&mesh, PAYMENT, "GET", "order:8080", "/orders/1", "");
    assert_denied(&from_payment, "payment calling order");

    // inventory and payment accept only order: not the gateway, not each other.
    let via_gateway = http::get(
        &http::agent(),
        &format!("{}/orders/stock/sku-1", mesh.ready.ingress),
        &[("authorization", &alice)],
    )
    .unwrap();
    assert_denied(&via_gateway, "the gateway calling inventory");
    let charge = r#"{"order_id":"e2e","user":"alice","amount":1}"#;
    let sideways = from_workload(&mesh, INVENTORY, "POST", "payment:8080", "/charge", charge);
    assert_denied(&sideways, "inventory calling payment");
    let by_order = from_workload(&mesh, ORDER, "POST", "payment:8080", "/charge", charge);
    assert_eq!(by_order.status, 200, "order may charge: {}", by_order.body);
    let faults = from_workload(&mesh, ORDER, "POST", "payment:8080", "/faults", "{}");
    assert_denied(&faults, "order calling payment's /faults");
    assert_eq!(
        from_workload(&mesh, INVENTORY, "GET", "payment:8080", "/healthz", "").status,
        200
    );

    // DENY beats ALLOW: the gateway may call order, but not /orders/blocked*.
    let blocked = http::get(
        &http::agent(),
        &format!("{}/orders/blocked-1", mesh.ready.ingress),
        &[("authorization", &alice)],
    )
    .unwrap();
    assert_denied(&blocked, "DENY over ALLOW");
    // A dry-run DENY only counts: the request passes.
    let shadow_denied = |mesh: &Mesh| -> u64 {
        mesh.stats_matching(ORDER, "rbac")
            .unwrap()
            .iter()
            .filter(|(name, _)| name.ends_with("rbac.istio_dry_run_deny_.shadow_denied"))
            .map(|(_, value)| value)
            .sum()
    };
    let before = shadow_denied(&mesh);
    let trial = http::get(
        &http::agent(),
        &format!("{}/healthz", mesh.ready.ingress),
        &[("x-trial", "deny-me")],
    )
    .unwrap();
    assert_eq!(trial.status, 200, "a dry-run policy does not enforce");
    assert_eq!(
        shadow_denied(&mesh),
        before + 1,
        "the dry run recorded the denial: {:?}",
        mesh.stats_matching(ORDER, "rbac").unwrap()
    );
}

/// Namespace STRICT (shipped), inventory PERMISSIVE, payment DISABLE, order
/// STRICT with its port 8080 PERMISSIVE.
const PEER_OVERRIDES: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: inventory, namespace: order-app}
spec:
  selector: {matchLabels: {app: inventory}}
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: payment, namespace: order-app}
spec:
  selector: {matchLabels: {app: payment}}
  mtls: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: order, namespace: order-app}
spec:
  selector: {matchLabels: {app: order}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
"#;

#[test]
fn permissive_accepts_both_and_a_workload_disable_beats_namespace_strict() {
    let mesh = start(&[PEER_OVERRIDES]);
    // PERMISSIVE (workload, and port level over workload STRICT): plaintext answers...
    for proxy in [INVENTORY, ORDER] {
        let health = plaintext(&inbound(&mesh, proxy), "GET", "x", "/healthz", "");
        assert_eq!(health.map(|r| r.status), Ok(200), "{proxy} in PERMISSIVE");
    }
    // ...and mesh callers still use mTLS (auto mTLS).
    let before = handshakes(&mesh, INVENTORY) + handshakes(&mesh, "inventory-v2");
    let placed = place_order(&mesh, &bearer(json!({})));
    assert!(
        handshakes(&mesh, INVENTORY) + handshakes(&mesh, "inventory-v2") > before,
        "order → inventory went plaintext"
    );

    // payment's DISABLE wins over the namespace's STRICT: plaintext is served,
    // and auto mTLS sends order's calls in plaintext, so they carry no peer
    // identity and payment's AuthorizationPolicy (principals: order) denies
    // /charge, as it would in a cluster.
    let health = plaintext(&inbound(&mesh, PAYMENT), "GET", "x", "/healthz", "");
    assert_eq!(health.map(|r| r.status), Ok(200));
    assert_eq!(
        handshakes(&mesh, PAYMENT),
        0,
        "payment took an mTLS handshake"
    );
    assert_ne!(
        placed.status, 201,
        "the charge passed without an identity: {}",
        placed.body
    );
    assert!(
        mesh.stat(PAYMENT, "http.inbound_0.0.0.0_8080.rbac.denied")
            .unwrap()
            >= 1
    );
}

/// Only Istio's JWT handling at the ingress: our authz plugin selects nothing.
const NO_AUTHZ_PLUGIN: &str = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: authz, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: nobody}}
  url: oci://ghcr.io/meshwasm/meshwasm:0.1.0
  pluginName: authz
  phase: AUTHN
  pluginConfig: {}
"#;

/// The shipped authz plugin's rules as an AuthorizationPolicy at the ingress.
const NATIVE_AUTHZ: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ingress-orders, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  rules:
  - to: [{operation: {paths: [/healthz]}}]
  - from: [{source: {requestPrincipals: ["https://auth.meshwasm.local/*"]}}]
    to: [{operation: {paths: ["/orders*"], notMethods: [DELETE]}}]
  - from: [{source: {requestPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/orders*"], methods: [DELETE]}}]
    when: [{key: "request.auth.claims[groups]", values: [admin]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ingress-blocked-users, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{when: [{key: "request.auth.claims[groups]", values: [blocked]}]}]
"#;

/// Only our authz plugin at the ingress: the RequestAuthentication selects nothing.
const NO_REQUEST_AUTHENTICATION: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ingress-jwt, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: nobody}}
"#;

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    authorization: Option<String>,
}

fn claim(mint: &mut Mint, name: &str, value: Value) {
    mint.claims.insert(name.to_owned(), value);
}

fn cases() -> Vec<Case> {
    let signed = |mint: Mint| format!("Bearer {}", mint.sign().unwrap());
    let demo = |f: &dyn Fn(&mut Mint)| {
        let mut mint = Mint::demo("alice").unwrap();
        f(&mut mint);
        signed(mint)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = demo(&|_| {});
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, _) = rest.split_once('.').unwrap();
    let bad_signature = format!("{head}.{payload}.c2lnbmF0dXJl");
    let other_key = {
        let mut mint = Mint::demo("mallory").unwrap();
        mint.key_pem =
            include_bytes!("../../filters/authz/testdata/other-rsa-private.pem").to_vec();
        signed(mint)
    };
    let case = |name, method, path, authorization: Option<String>| Case {
        name,
        method,
        path,
        authorization,
    };
    vec![
        case("no token, /healthz", "GET", "/healthz", None),
        case("no token, /orders", "GET", "/orders/1", None),
        case(
            "good token, /orders",
            "GET",
            "/orders/1",
            Some(good.clone()),
        ),
        case(
            "good token, /healthz",
            "GET",
            "/healthz",
            Some(good.clone()),
        ),
        case(
            "expired",
            "GET",
            "/orders/1",
            Some(demo(&|m| claim(m, "exp", json!(now - 3600)))),
        ),
        case(
            "expired, /healthz",
            "GET",
            "/healthz",
            Some(demo(&|m| claim(m, "exp", json!(now - 3600)))),
        ),
        case(
            "not yet valid",
            "GET",
            "/orders/1",
            Some(demo(&|m| claim(m, "nbf", json!(now + 3600)))),
        ),
        case(
            "unknown issuer",
            "GET",
            "/orders/1",
            Some(demo(&|m| m.issuer = "https://evil.example".into())),
        ),
        case(
            "wrong audience",
            "GET",
            "/orders/1",
            Some(demo(&|m| m.audience = "other-app".into())),
        ),
        case("bad signature", "GET", "/orders/1", Some(bad_signature)),
        case("signed by another key", "GET", "/orders/1", Some(other_key)),
        case(
            "garbage",
            "GET",
            "/orders/1",
            Some("Bearer not.a.token".into()),
        ),
        case(
            "DELETE without admin",
            "DELETE",
            "/orders/1",
            Some(good.clone()),
        ),
        case(
            "DELETE as admin",
            "DELETE",
            "/orders/1",
            Some(demo(&|m| claim(m, "groups", json!(["admin"])))),
        ),
        case(
            "blocked group",
            "GET",
            "/orders/1",
            Some(demo(&|m| claim(m, "groups", json!(["blocked"])))),
        ),
        case("other path", "GET", "/admin", Some(good)),
    ]
}

/// Where the two differ on purpose (README: "Istio-native security or the
/// authz filter"): our filter requires `exp`.
fn intended_difference_cases() -> Vec<Case> {
    let no_exp = {
        let mut mint = Mint::demo("alice").unwrap();
        mint.claims.insert("exp".into(), Value::Null);
        format!("Bearer {}", mint.sign().unwrap())
    };
    vec![Case {
        name: "no exp claim",
        method: "GET",
        path: "/orders/1",
        authorization: Some(no_exp),
    }]
}

/// A client's view of a decision: the status, and whether it was let through.
fn decision(mesh: &Mesh, case: &Case) -> (u16, bool) {
    let mut headers = Vec::new();
    if let Some(value) = &case.authorization {
        headers.push(("authorization", value.as_str()));
    }
    let url = format!("{}{}", mesh.ready.ingress, case.path);
    let response = http::send(&http::agent(), case.method, &url, "", &headers).unwrap();
    (response.status, ![401, 403].contains(&response.status))
}

/// Our authz plugin as shipped, plus the DENY of the native policy below.
fn authz_plugin_with_blocked_users() -> String {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../wasmplugin-manifests/wasmplugin-authz.yaml"
    ))
    .unwrap();
    assert!(shipped.contains("    rules:\n"));
    shipped.replacen(
        "    rules:\n",
        "    rules:\n      - name: blocked-users\n        action: DENY\n        claims:\n          - claim: groups\n            contains: blocked\n",
        1,
    )
}

#[test]
fn request_authentication_and_authorization_policy_at_the_ingress_match_our_authz_filter() {
    let native = start(&[NO_AUTHZ_PLUGIN, NATIVE_AUTHZ]);
    let native_decisions: Vec<(u16, bool)> = cases().iter().map(|c| decision(&native, c)).collect();
    let native_different: Vec<(u16, bool)> = intended_difference_cases()
        .iter()
        .map(|c| decision(&native, c))
        .collect();

    // What jwt_authn and RBAC answer themselves.
    let get = |path: &str, headers: &[(&str, &str)]| {
        http::get(
            &http::agent(),
            &format!("{}{path}", native.ready.ingress),
            headers,
        )
        .unwrap()
    };
    let expired = cases().into_iter().find(|c| c.name == "expired").unwrap();
    let response = get(
        expired.path,
        &[("authorization", expired.authorization.as_deref().unwrap())],
    );
    assert_eq!(
        (response.status, response.body.as_str()),
        (401, "Jwt is expired")
    );
    let response = get("/orders/1", &[("authorization", "Bearer not.a.token")]);
    assert_eq!(response.status, 401, "{}", response.body);
    let no_token = get("/orders/1", &[]);
    assert_denied(
        &no_token,
        "a missing token passes jwt_authn; RBAC wants a request principal",
    );
    let good = bearer(json!({}));
    assert_eq!(get("/healthz", &[("authorization", &good)]).status, 200);
    let unknown = cases()
        .into_iter()
        .find(|c| c.name == "unknown issuer")
        .unwrap();
    let response = get(
        unknown.path,
        &[("authorization", unknown.authorization.as_deref().unwrap())],
    );
    assert_eq!(
        (response.status, response.body.as_str()),
        (401, "Jwt issuer is not configured")
    );
    drop(native);

    let plugin = authz_plugin_with_blocked_users();
    let ours = start(&[NO_REQUEST_AUTHENTICATION, &plugin]);
    let our_decisions: Vec<(u16, bool)> = cases().iter().map(|c| decision(&ours, c)).collect();
    let our_different: Vec<(u16, bool)> = intended_difference_cases()
        .iter()
        .map(|c| decision(&ours, c))
        .collect();

    let mut mismatches = Vec::new();
    for ((case, native), ours) in cases().iter().zip(&native_decisions).zip(&our_decisions) {
        // Intended: without a token our filter challenges (401 + WWW-Authenticate);
        // Istio's RBAC, which only sees that no principal is set, answers 403.
        // And a token for another audience is 403 from jwt_authn, 401 (invalid_token) from ours.
        let status_may_differ = ["no token, /orders", "wrong audience"].contains(&case.name);
        if native.1 != ours.1 || (native.0 != ours.0 && !status_may_differ) {
            mismatches.push(format!(
                "{}: Istio {}, authz filter {}",
                case.name, native.0, ours.0
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "decisions differ:\n{}",
        mismatches.join("\n")
    );
    for ((case, native), ours) in intended_difference_cases()
        .iter()
        .zip(&native_different)
        .zip(&our_different)
    {
        assert!(
            native.1 && ours.0 == 401,
            "intended difference {}: Istio lets it through, our filter answers 401; got {} and {}",
            case.name,
            native.0,
            ours.0
        );
    }
}

/// Our authz filter on payment's inbound listener sees the mTLS peer:
/// `principals` as Istio's `source.principals`.
const AUTHZ_ON_PAYMENT: &str = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: authz-payment, namespace: order-app}
spec:
  selector: {matchLabels: {app: payment}}
  match: [{mode: SERVER}]
  url: oci://ghcr.io/meshwasm/meshwasm:0.1.0
  pluginName: authz
  phase: AUTHZ
  pluginConfig:
    rules:
      - name: order-charges
        action: ALLOW
        principals: [cluster.local/ns/order-app/sa/order]
        methods: [POST]
        paths: [/charge]
      - name: health
        action: ALLOW
        paths: [/healthz]
"#;

#[test]
fn our_authz_filter_sees_the_mtls_peer() {
    let mesh = start(&[AUTHZ_ON_PAYMENT]);
    let charge = r#"{"order_id":"e2e","user":"alice","amount":1}"#;
    let by_order = from_workload(&mesh, ORDER, "POST", "payment:8080", "/charge", charge);
    assert_eq!(by_order.status, 200, "{}", by_order.body);
    // inventory's identity is not order's: our filter (phase AUTHZ, before
    // Istio's rbac) refuses it with its own answer; no rule allows the call,
    // so it asks for credentials (401 token-missing) where Istio's RBAC says 403.
    let sideways = from_workload(&mesh, INVENTORY, "POST", "payment:8080", "/charge", charge);
    assert_eq!(sideways.status, 401, "{}", sideways.body);
    assert!(
        sideways.body.contains("urn:meshwasm:problem:token-missing"),
        "{}",
        sideways.body
    );
    assert_eq!(place_order(&mesh, &bearer(json!({}))).status, 201);
}
