//! End to end: the routing filter on the ingress gateway and on order's
//! sidecar (`wasmplugin-manifests/wasmplugin-routing.yaml`) sends users to
//! inventory v1/v2. What a client sees: `inventory_version` in order's 201.
//!
//! Run: `MESHWASM_ENVOY=... MESHWASM_DIST=... cargo test -p meshwasm-integration --test routing -- --test-threads 1`

use meshwasm_integration::http::{self, Response};
use meshwasm_integration::{Mesh, MeshOptions};
use serde_json::json;
use std::collections::BTreeMap;

const INGRESS: &str = "istio-ingressgateway";

/// A valid demo token with `claims`: the shipped authz plugin requires one
/// for `/orders` and hands its verified claims to the routing filter.
fn bearer(claims: serde_json::Value) -> String {
    mint_token::demo_bearer("e2e", claims).unwrap()
}

/// An order with a token carrying no routing claims, unless `headers` has one.
fn order(agent: &ureq::Agent, mesh: &Mesh, path: &str, headers: &[(&str, &str)]) -> Response {
    let url = format!("{}{path}", mesh.ready.ingress);
    let body = json!({"sku": "sku-1", "quantity": 1, "user": "e2e"});
    let auth = bearer(json!({}));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if !headers.iter().any(|(name, _)| *name == "authorization") {
        all.push(("authorization", &auth));
    }
    http::post_json(agent, &url, &body, &all).unwrap()
}

/// The inventory version that served an order.
fn version_of(response: &Response) -> String {
    assert_eq!(response.status, 201, "order failed: {}", response.body);
    response.json().unwrap()["inventory_version"]
        .as_str()
        .unwrap_or_else(|| panic!("no inventory_version in {}", response.body))
        .to_owned()
}

#[test]
fn sticky_canary_sends_a_fifth_of_users_to_v2_across_the_order_hop() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let agent = http::agent();

    // 1 000 distinct users: 20 % on v2, within ±3 points. The decision is
    // made at the gateway and reaches inventory only as a baggage lane that
    // order's sidecar turns into the header the VirtualService matches, so
    // this also proves the lane survives the order → inventory hop (without
    // it, inventory would see the VirtualService's random 90/10 split).
    let mut versions = BTreeMap::new();
    for user in 0..1_000 {
        let id = format!("user-{user}");
        let version = version_of(&order(&agent, &mesh, "/orders", &[("x-user", &id)]));
        versions.insert(id, version);
    }
    let on_v2 = versions.values().filter(|v| *v == "v2").count();
    assert!(
        (170..=230).contains(&on_v2),
        "{on_v2} of 1000 users on v2, expected 200 ± 30"
    );
    assert!(versions.values().all(|v| v == "v1" || v == "v2"));

    // Every user always lands on the same version.
    for (id, first) in versions.iter().step_by(10) {
        for _ in 0..3 {
            let again = version_of(&order(&agent, &mesh, "/orders", &[("x-user", id)]));
            assert_eq!(&again, first, "{id} moved from {first} to {again}");
        }
    }

    // A client-supplied lane (header or baggage) is ignored: v1 users stay on v1.
    let v1_users: Vec<&String> = versions
        .iter()
        .filter(|(_, v)| *v == "v1")
        .map(|(id, _)| id)
        .take(30)
        .collect();
    for id in v1_users {
        let spoofed = [
            ("x-user", id.as_str()),
            ("x-meshwasm-lane", "v2"),
            ("baggage", "meshwasm-lane=v2"),
        ];
        let response = order(&agent, &mesh, "/orders", &spoofed);
        assert_eq!(version_of(&response), "v1", "{id} picked its own lane");
    }

    // Decisions are counted per rule and lane at the gateway.
    let metrics = mesh.prometheus(INGRESS).unwrap();
    let counted = metrics.lines().any(|line| {
        line.starts_with("meshwasm_routing_decisions_total")
            && line.contains("rule=\"inventory-canary\"")
            && line.contains("lane=\"v2\"")
    });
    assert!(counted, "no decision metric in:\n{metrics}");
}

/// The ingress plugin of the shipped manifest plus a path rewrite and the
/// debug header; claims come from the authz filter's verified token.
const INGRESS_WITH_REWRITE: &str = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: routing-ingress
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  url: oci://ghcr.io/meshwasm/meshwasm:0.1.0
  pluginName: routing
  phase: AUTHZ
  failStrategy: FAIL_OPEN
  pluginConfig:
    lane:
      accept_baggage: false
      allowed: [v1, v2]
    debug_header: x-meshwasm-route
    rules:
      - name: legacy-prefix
        match:
          path: /orders-legacy*
        action:
          path_rewrite:
            prefix:
              from: /orders-legacy
              to: /orders
      - name: beta
        match:
          claims:
            - name: beta
              exact: "true"
        action:
          lane: v2
      - name: inventory-canary-user-claim
        match:
          claims:
            - name: user
        action:
          split:
            key:
              claim: user
            seed: inventory-v2-canary
            variants:
              - lane: v2
                weight: 20
              - lane: v1
                weight: 80
"#;

#[test]
fn verified_beta_claims_go_to_v2_and_rewritten_paths_reach_the_app() {
    let mesh = Mesh::start(MeshOptions {
        extra_manifests: vec![INGRESS_WITH_REWRITE.to_owned()],
        ..MeshOptions::default()
    })
    .unwrap();
    let agent = http::agent();

    // Users the canary puts on v1 go to v2 once they hold `beta: true`.
    let mut checked = 0;
    for user in 0..60 {
        let plain = bearer(json!({"user": format!("u{user}")}));
        let response = order(&agent, &mesh, "/orders", &[("authorization", &plain)]);
        if version_of(&response) != "v1" {
            continue;
        }
        checked += 1;
        let beta = bearer(json!({"user": format!("u{user}"), "beta": true}));
        for _ in 0..3 {
            let response = order(&agent, &mesh, "/orders", &[("authorization", &beta)]);
            assert_eq!(version_of(&response), "v2", "beta user u{user}");
            assert_eq!(
                response.header("x-meshwasm-route"),
                Some("rule=beta; lane=v2")
            );
        }
    }
    assert!(checked >= 20, "only {checked} v1 users to check");

    // `/orders-legacy` passes authz (its `/orders*` rule) and the gateway's
    // `/orders` prefix route; only the rewrite makes the app (which serves
    // `/orders`, not `/orders-legacy`) create the order.
    let response = order(&agent, &mesh, "/orders-legacy", &[]);
    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(
        response.header("x-meshwasm-route"),
        Some("rule=legacy-prefix; lane=none")
    );
    let location = response.header("location").unwrap_or_default();
    assert!(location.starts_with("/orders/"), "location {location}");
}

/// Takes the shipped authz plugin off the gateway (a selector no proxy has),
/// so that any path reaches the routing filter.
const NO_AUTHZ: &str = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: authz
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: no-such-workload
  url: oci://ghcr.io/meshwasm/meshwasm:0.1.0
  pluginName: authz
"#;

/// Istio's default path normalisation runs before the routing filter: dot
/// segments are resolved, `//` is not merged, so a path rule sees what it
/// would see in a cluster.
#[test]
fn path_rules_see_paths_normalised_as_istio_does_by_default() {
    let mesh = Mesh::start(MeshOptions {
        extra_manifests: vec![INGRESS_WITH_REWRITE.to_owned(), NO_AUTHZ.to_owned()],
        ..MeshOptions::default()
    })
    .unwrap();
    let body = json!({"sku": "sku-1", "quantity": 1, "user": "e2e"}).to_string();
    let send = |path: &str| {
        http::raw_request(
            &mesh.ready.ingress,
            "POST",
            path,
            &[("content-type", b"application/json")],
            &body,
        )
        .unwrap()
    };
    for path in ["/orders-legacy", "/./orders-legacy", "/v1/../orders-legacy"] {
        let response = send(path);
        assert_eq!(response.status, 201, "{path}: {}", response.body);
        assert_eq!(
            response.header("x-meshwasm-route"),
            Some("rule=legacy-prefix; lane=none"),
            "{path}"
        );
    }
    // Not merged: `//orders-legacy` matches neither the rule nor the gateway's
    // `/orders` prefix route, so Envoy finds no route.
    let doubled = send("//orders-legacy");
    assert_eq!(doubled.status, 404, "{}", doubled.body);
    assert_ne!(
        doubled.header("x-meshwasm-route"),
        Some("rule=legacy-prefix; lane=none")
    );
}
