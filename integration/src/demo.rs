//! `make demo`: a short scripted scenario through the ingress, printed as
//! tables of what each hop saw. Sections for filters whose WasmPlugin is not
//! in the manifests print what happened anyway (e.g. no breaker trips).

use crate::http::{self, Response};
use crate::Mesh;
use anyhow::{Context, Result};
use mint_token::demo_bearer as token;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const CANARY_USERS: usize = 200;

pub fn run(mesh: &Mesh) -> Result<()> {
    let demo = Demo {
        mesh,
        agent: http::agent(),
    };
    demo.order_flow()?;
    demo.authorization()?;
    demo.mesh_security()?;
    demo.canary()?;
    demo.breaker()?;
    demo.red_table()
}

struct Demo<'a> {
    mesh: &'a Mesh,
    agent: ureq::Agent,
}

fn problem_type(response: &Response) -> String {
    response
        .json()
        .ok()
        .and_then(|body| body.get("type").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

impl Demo<'_> {
    fn order(&self, user: &str, auth: &str, extra: &[(&str, &str)]) -> Result<Response> {
        let mut headers = vec![("authorization", auth)];
        headers.extend_from_slice(extra);
        http::post_json(
            &self.agent,
            &format!("{}/orders", self.mesh.ready.ingress),
            &json!({"sku": "sku-1", "quantity": 1, "user": user}),
            &headers,
        )
    }

    fn order_flow(&self) -> Result<()> {
        println!("\n== 1. one order through the ingress gateway and three sidecars");
        let before = self.inbound_requests()?;
        let response = self.order("alice", &token("alice", json!({}))?, &[])?;
        println!(
            "POST /orders (alice, valid token) -> {} {}",
            response.status, response.body
        );
        let after = self.inbound_requests()?;
        println!("{:<16} {:>20}", "WORKLOAD", "REQUESTS AT SIDECAR");
        for (name, count) in &after {
            println!(
                "{:<16} {:>20}",
                name,
                count - before.get(name).copied().unwrap_or(0)
            );
        }
        Ok(())
    }

    fn authorization(&self) -> Result<()> {
        println!("\n== 2. authorization at the ingress (authz filter)");
        let ingress = &self.mesh.ready.ingress;
        let admin = token("root", json!({"groups": ["admin"]}))?;
        let expired = token("alice", json!({"exp": 1_000_000_000}))?;
        let cases: Vec<(&str, Response)> = vec![
            (
                "POST /orders, no token",
                http::post_json(
                    &self.agent,
                    &format!("{ingress}/orders"),
                    &json!({"sku": "a", "quantity": 1, "user": "alice"}),
                    &[],
                )?,
            ),
            (
                "POST /orders, expired token",
                self.order("alice", &expired, &[])?,
            ),
            (
                "POST /orders, garbage token",
                self.order("alice", "Bearer not.a.jwt", &[])?,
            ),
            (
                "DELETE /orders/1, alice",
                http::send(
                    &self.agent,
                    "DELETE",
                    &format!("{ingress}/orders/1"),
                    "",
                    &[("authorization", &token("alice", json!({}))?)],
                )?,
            ),
            (
                "DELETE /orders/1, admin (no DELETE in app)",
                http::send(
                    &self.agent,
                    "DELETE",
                    &format!("{ingress}/orders/1"),
                    "",
                    &[("authorization", &admin)],
                )?,
            ),
            (
                "GET /healthz, no token",
                http::get(&self.agent, &format!("{ingress}/healthz"), &[])?,
            ),
        ];
        println!(
            "{:<40} {:>6}  PROBLEM TYPE / WWW-AUTHENTICATE",
            "REQUEST", "STATUS"
        );
        for (name, response) in cases {
            let detail = [
                problem_type(&response),
                response
                    .header("www-authenticate")
                    .unwrap_or_default()
                    .to_owned(),
            ]
            .join("  ");
            println!("{name:<40} {:>6}  {}", response.status, detail.trim());
        }
        Ok(())
    }

    /// The tutorial's mTLS and AuthorizationPolicy steps, enforced by Envoy's
    /// own TLS and rbac filters as istiod configures them (40-security.yaml).
    fn mesh_security(&self) -> Result<()> {
        println!("\n== 2b. Istio security: STRICT mTLS between sidecars, AuthorizationPolicy (Envoy rbac)");
        let order_inbound = self.mesh.listener_address("order-v1", "virtualInbound")?;
        let plaintext = http::raw_request(
            &format!("http://{order_inbound}"),
            "GET",
            "/healthz",
            &[],
            "",
        );
        println!(
            "{:<52} {}",
            "plaintext client (no sidecar) -> order's sidecar",
            match plaintext {
                Ok(response) => format!("{} (not refused)", response.status),
                Err(_) => "refused: no client certificate (PeerAuthentication STRICT)".to_owned(),
            }
        );
        let handshakes = self.mesh.stat(
            "order-v1",
            &format!("listener.{}.ssl.handshake", order_inbound.replace(':', "_")),
        )?;
        println!(
            "{:<52} {handshakes}",
            "mTLS handshakes on order's inbound listener so far"
        );
        let charge = json!({"order_id": "demo", "user": "alice", "amount": 1}).to_string();
        println!(
            "{:<52} {:>6}  BODY",
            "CALL (from the workload's app, through its sidecar)", "STATUS"
        );
        for (caller, path) in [
            ("order-v1", "/charge"),
            ("inventory-v1", "/charge"),
            ("order-v1", "/faults"),
        ] {
            // The app's HTTP proxy: its sidecar's outbound listener.
            let outbound = self.mesh.listener_address(caller, "0.0.0.0_8080")?;
            let response = http::raw_request(
                &format!("http://{outbound}"),
                "POST",
                path,
                &[
                    ("host", b"payment:8080"),
                    ("content-type", b"application/json"),
                ],
                &charge,
            )?;
            println!(
                "{:<52} {:>6}  {}",
                format!("{caller} -> payment POST {path}"),
                response.status,
                response.body.chars().take(60).collect::<String>()
            );
        }
        Ok(())
    }

    fn canary(&self) -> Result<()> {
        println!("\n== 3. sticky canary: users to inventory v1/v2 (routing filter + VirtualService subsets)");
        let auth = token("canary-demo", json!({}))?;
        let mut versions: BTreeMap<String, usize> = BTreeMap::new();
        for index in 0..CANARY_USERS {
            let user = format!("user-{index}");
            let response = self.order(&user, &auth, &[("x-user", &user)])?;
            *versions.entry(inventory_version(&response)).or_default() += 1;
        }
        let beta = self.order(
            "bea",
            &token("bea", json!({"beta": true}))?,
            &[("x-user", "bea")],
        )?;
        println!("{:<12} {:>8} {:>8}", "VERSION", "USERS", "SHARE");
        for (version, count) in &versions {
            println!(
                "{version:<12} {count:>8} {:>7.1}%",
                100.0 * *count as f64 / CANARY_USERS as f64
            );
        }
        println!(
            "a `beta: true` token holder -> inventory {}",
            inventory_version(&beta)
        );
        Ok(())
    }

    fn breaker(&self) -> Result<()> {
        println!(
            "\n== 4. circuit breaker on order -> payment (payment fault knob at 100 % errors)"
        );
        let payment = &self
            .mesh
            .ready
            .workloads
            .get("payment-v1")
            .context("no payment-v1 workload")?
            .app;
        let faults = |rate: f64| {
            http::post_json(
                &self.agent,
                &format!("{payment}/faults"),
                &json!({"error_rate": rate, "latency_ms": 0}),
                &[],
            )
        };
        faults(1.0)?;
        let auth = token("alice", json!({}))?;
        println!(
            "{:<6} {:>6} {:>10} {:>12} {:>22}",
            "ORDER", "STATUS", "BREAKER", "RETRY-AFTER", "PAYMENT CHARGES SEEN"
        );
        for index in 1..=10 {
            let response = self.order("alice", &auth, &[])?;
            println!(
                "{index:<6} {:>6} {:>10} {:>12} {:>22}",
                response.status,
                response.header("x-meshwasm-breaker").unwrap_or("-"),
                response.header("retry-after").unwrap_or("-"),
                self.charges_seen()?
            );
        }
        faults(0.0)?;
        let started = Instant::now();
        let recovered = loop {
            let response = self.order("alice", &auth, &[])?;
            if response.status == 201 {
                break true;
            }
            if started.elapsed() > Duration::from_secs(60) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        println!(
            "payment healed -> orders succeed again after {:.1}s: {recovered}",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Per-route RED figures queried from the mesh's Prometheus, which scrapes
    /// every proxy's `/stats/prometheus` with its pod's labels.
    fn red_table(&self) -> Result<()> {
        let prometheus = self.mesh.prometheus_api()?;
        println!(
            "\n== 5. RED per route from Prometheus at {} (telemetry filter)",
            prometheus.url
        );
        prometheus.wait_caught_up(Duration::from_secs(60))?;
        const BY: &str = "pod, reporter, route";
        let query = |expr: &str| -> Result<BTreeMap<(String, String, String), f64>> {
            Ok(prometheus
                .query(expr)?
                .into_iter()
                .map(|s| {
                    let key = |name| s.label(name).to_owned();
                    ((key("pod"), key("reporter"), key("route")), s.value)
                })
                .collect())
        };
        let requests = query(&format!("sum by ({BY}) (meshwasm_requests_total)"))?;
        let errors = query(&format!(
            r#"sum by ({BY}) (meshwasm_requests_total{{response_code_class="5xx"}})"#
        ))?;
        let mean = query(&format!(
            "sum by ({BY}) (meshwasm_request_duration_milliseconds_sum) \
             / sum by ({BY}) (meshwasm_request_duration_milliseconds_count)"
        ))?;
        let p95 = query(&format!(
            "histogram_quantile(0.95, sum by ({BY}, le) (meshwasm_request_duration_milliseconds_bucket))"
        ))?;
        println!(
            "{:<22} {:<9} {:<16} {:>8} {:>8} {:>10} {:>10}",
            "POD", "REPORTER", "ROUTE", "REQUESTS", "ERRORS", "MEAN MS", "P95 MS"
        );
        let ms = |value: Option<&f64>| {
            value
                .filter(|v| v.is_finite())
                .map_or("-".to_owned(), |v| format!("{v:.2}"))
        };
        for (key, count) in requests.iter().filter(|(_, count)| **count > 0.0) {
            let (pod, reporter, route) = key;
            println!(
                "{pod:<22} {reporter:<9} {route:<16} {count:>8} {:>8} {:>10} {:>10}",
                errors.get(key).copied().unwrap_or(0.0),
                ms(mean.get(key)),
                ms(p95.get(key)),
            );
        }
        Ok(())
    }

    /// Requests each workload's sidecar passed to its app.
    fn inbound_requests(&self) -> Result<BTreeMap<String, u64>> {
        self.mesh
            .ready
            .workloads
            .keys()
            .map(|name| {
                Ok((
                    name.clone(),
                    self.mesh
                        .stat(name, "cluster.inbound|8080||.upstream_rq_completed")
                        .with_context(|| format!("stats of {name}"))?,
                ))
            })
            .collect()
    }

    fn charges_seen(&self) -> Result<u64> {
        self.mesh
            .stat("payment-v1", "cluster.inbound|8080||.upstream_rq_completed")
    }
}

fn inventory_version(response: &Response) -> String {
    response
        .json()
        .ok()
        .and_then(|body| {
            body.get("inventory_version")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("HTTP {}", response.status))
}
