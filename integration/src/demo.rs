//! `make demo`: a short scripted scenario through the ingress, printed as
//! tables of what each hop saw.

use crate::Mesh;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;

const SPLIT_ORDERS: usize = 100;

pub fn run(mesh: &Mesh) -> Result<()> {
    let agent = crate::http::agent();
    println!("\n== 1. one order through the ingress, four Envoys and three services");
    let before = inbound_requests(mesh)?;
    let order = crate::http::post_json(
        &agent,
        &format!("{}/orders", mesh.ready.ingress),
        &json!({"sku": "sku-1", "quantity": 2, "user": "alice"}),
        &[],
    )?;
    println!("POST /orders -> {} {}", order.status, order.body);
    let after = inbound_requests(mesh)?;
    println!("{:<16} {:>22}", "WORKLOAD", "REQUESTS AT SIDECAR");
    for (name, count) in &after {
        println!(
            "{:<16} {:>22}",
            name,
            count - before.get(name).copied().unwrap_or(0)
        );
    }

    println!("\n== 2. inventory v1/v2 split by the VirtualService ({SPLIT_ORDERS} orders)");
    let mut versions: BTreeMap<String, usize> = BTreeMap::new();
    for index in 0..SPLIT_ORDERS {
        let response = crate::http::post_json(
            &agent,
            &format!("{}/orders", mesh.ready.ingress),
            &json!({"sku": "sku-2", "quantity": 1, "user": format!("user-{index}")}),
            &[],
        )?;
        let version = response
            .json()
            .ok()
            .and_then(|body| {
                body.get("inventory_version")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| format!("HTTP {}", response.status));
        *versions.entry(version).or_default() += 1;
    }
    println!("{:<12} {:>8}", "VERSION", "ORDERS");
    for (version, count) in &versions {
        println!("{version:<12} {count:>8}");
    }
    Ok(())
}

/// Requests each workload's sidecar passed to its app.
fn inbound_requests(mesh: &Mesh) -> Result<BTreeMap<String, u64>> {
    mesh.ready
        .workloads
        .keys()
        .map(|name| {
            Ok((
                name.clone(),
                mesh.stat(name, "cluster.inbound|8080||.upstream_rq_completed")
                    .with_context(|| format!("stats of {name}"))?,
            ))
        })
        .collect()
}
