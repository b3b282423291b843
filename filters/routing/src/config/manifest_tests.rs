//! The `pluginConfig`s shipped in `wasmplugin-manifests/` are valid configs.

use super::Config;
use crate::engine::{RequestView, Router};
use meshwasm_shared::config::parse;
use meshwasm_shared::host_headers::Header;
use serde_json::{json, Value};
use std::borrow::Cow;

fn shipped_configs() -> Vec<(String, Router)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../wasmplugin-manifests/wasmplugin-routing.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            let plugin: Value = serde::Deserialize::deserialize(document).unwrap();
            let name = plugin["metadata"]["name"].as_str().unwrap().to_owned();
            let raw = plugin["spec"]["pluginConfig"].to_string();
            let config =
                parse::<Config>(Some(raw.as_bytes())).unwrap_or_else(|err| panic!("{name}: {err}"));
            (name, Router::new(config))
        })
        .collect()
}

fn lane_of(router: &Router, headers: &[(&str, &str)], claims: Option<Value>) -> Option<String> {
    let headers: Vec<Header> = headers
        .iter()
        .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v)))
        .collect();
    let decision = router.decide(&RequestView {
        method: "POST",
        path: "/orders",
        authority: "shop.example.com",
        scheme: "https",
        headers: &headers,
        claims: claims.as_ref(),
    });
    decision.lane.map(|lane| lane.value)
}

#[test]
fn shipped_manifest_configs_parse_and_route_as_documented() {
    let configs = shipped_configs();
    let names: Vec<&str> = configs.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["routing-ingress", "routing-order"]);
    // The debug header would tell every client rule and lane names.
    for (name, router) in &configs {
        assert_eq!(router.debug_header(), None, "{name}");
    }
    let (ingress, order) = (&configs[0].1, &configs[1].1);

    // Beta claim: always v2.
    for user in 0..50 {
        let claims = json!({"beta": true, "user": format!("u{user}")});
        assert_eq!(lane_of(ingress, &[], Some(claims)).as_deref(), Some("v2"));
    }
    // A client-chosen baggage lane is not followed at the edge: v1 users stay on v1.
    let v1_users: Vec<String> = (0..100)
        .map(|user| format!("u{user}"))
        .filter(|id| lane_of(ingress, &[("x-user", id)], None).as_deref() == Some("v1"))
        .collect();
    assert!(!v1_users.is_empty());
    for id in &v1_users {
        let spoofed = [("x-user", id.as_str()), ("baggage", "meshwasm-lane=v2")];
        assert_eq!(lane_of(ingress, &spoofed, None).as_deref(), Some("v1"));
    }
    // Claim and header with the same user id share a bucket.
    for user in 0..200 {
        let id = format!("user-{user}");
        assert_eq!(
            lane_of(ingress, &[], Some(json!({"user": id}))),
            lane_of(ingress, &[("x-user", &id)], None)
        );
    }
    // 20 % of users in v2.
    let v2 = (0..5_000)
        .filter(|user| {
            lane_of(ingress, &[("x-user", &format!("u{user}"))], None).as_deref() == Some("v2")
        })
        .count();
    assert!((900..=1_100).contains(&v2), "{v2} of 5000");

    // order's sidecar follows the baggage lane and ignores unknown lanes.
    assert_eq!(
        lane_of(order, &[("baggage", "meshwasm-lane=v2")], None).as_deref(),
        Some("v2")
    );
    assert_eq!(
        lane_of(order, &[("baggage", "meshwasm-lane=v7")], None),
        None
    );
    assert_eq!(lane_of(order, &[], None), None);
}
