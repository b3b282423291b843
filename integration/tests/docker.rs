//! `make docker-test`: the project `mesh compose` writes, run by Docker
//! Compose with images built here (no registry is reachable): Envoy from the
//! binary the end-to-end tests run, the apps from `apps/order-app/docker/Dockerfile`.
//! Every request goes through the ingress gateway's container on 127.0.0.1.
//! Ignored by plain `cargo test`: it needs Docker and the static app binaries.

use meshwasm_integration::compose::{self, ComposeProject, ENVOY_IMAGE_VARIABLE};
use meshwasm_integration::docker::{self, Docker};
use meshwasm_integration::http::{self, Response};
use meshwasm_integration::mesh::{repo_root, wait_until_ready};
use meshwasm_integration::prometheus::total;
use meshwasm_integration::{skip, MeshOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TEST: &str = "docker::compose_project_runs_the_mesh_on_docker";
const PROJECT: &str = "meshwasm-docker-test";

#[test]
#[ignore = "needs Docker and static app binaries: run by `make docker-test`"]
fn compose_project_runs_the_mesh_on_docker() {
    let state = std::env::var_os("MESHWASM_DOCKER_DIR")
        .map_or_else(|| repo_root().join("target/docker"), PathBuf::from);
    let docker = match Docker::connect_or_start(&state.join("engine")) {
        Ok(docker) => docker,
        Err(err) => {
            eprintln!("no Docker engine: {err:#}");
            skip::skip(
                TEST,
                "Docker engine",
                "`make docker-test` as root installs Debian's docker.io and starts dockerd",
            );
            return;
        }
    };
    let options = MeshOptions {
        run_dir: state.join("project"),
        ..MeshOptions::default()
    };
    if options.run_dir.exists() {
        std::fs::remove_dir_all(&options.run_dir).unwrap();
    }
    let project = compose::write_project(&options).unwrap();
    let started = Instant::now();
    let images = build_images(&docker, &project, &options.envoy, &state);
    eprintln!("images built in {:?}: {images:?}", started.elapsed());

    let running = Running::up(&docker, &project, &images);
    // Five Envoys compiling the module with V8 at once take a while on 2 cores.
    wait_until_ready(&project.ready, Duration::from_secs(180), |_, timed_out| {
        if timed_out {
            anyhow::bail!("containers:\n{}", running.ps());
        }
        Ok(())
    })
    .unwrap();
    eprintln!("compose up and ready in {:?}", started.elapsed());

    let ingress = Ingress {
        url: project.ready.ingress.clone(),
        agent: http::agent(),
    };
    let orders = order_flow(&ingress);
    authz_answers_401_and_403(&ingress);
    canary_splits_users_between_inventory_versions(&ingress);
    breaker_opens_on_failing_payment(&ingress, &project.ready.workloads["payment-v1"].app);
    telemetry_counts_the_orders(&project.ready.ingress_admin, orders);

    running.down();
}

/// Every image variable of the project set to an image built here.
fn build_images(
    docker: &Docker,
    project: &ComposeProject,
    envoy: &Path,
    state: &Path,
) -> BTreeMap<String, String> {
    let root = repo_root();
    let envoy_context = state.join("envoy-image");
    docker::envoy_image_context(envoy, &envoy_context).unwrap();
    let envoy_tag = "meshwasm-test/envoy:local".to_owned();
    docker
        .build(
            &root.join("integration/docker/envoy.Dockerfile"),
            &envoy_context,
            &envoy_tag,
            &[],
        )
        .unwrap();
    let mut images = BTreeMap::from([(ENVOY_IMAGE_VARIABLE.to_owned(), envoy_tag)]);

    // A context with only the binaries: the cargo target folder is large.
    let static_bin = std::env::var_os("MESHWASM_STATIC_APP_BIN").map_or_else(
        || root.join("target/x86_64-unknown-linux-musl/release"),
        PathBuf::from,
    );
    let app_context = state.join("app-image");
    std::fs::create_dir_all(&app_context).unwrap();
    for (variable, binary) in &project.app_binaries {
        let from = static_bin.join(binary);
        std::fs::copy(&from, app_context.join(binary)).unwrap_or_else(|err| {
            panic!(
                "no static {binary} at {} ({err}): build it with \
                 `cargo build --release --target x86_64-unknown-linux-musl -p order-app`",
                from.display()
            )
        });
        let tag = format!("meshwasm-test/{binary}:local");
        docker
            .build(
                &root.join("apps/order-app/docker/Dockerfile"),
                &app_context,
                &tag,
                &[("APP", binary)],
            )
            .unwrap();
        images.insert(variable.clone(), tag);
    }
    images
}

/// The compose project while it runs; taken down on drop (with every
/// container's log when the test failed).
struct Running<'a> {
    docker: &'a Docker,
    file: PathBuf,
    images: &'a BTreeMap<String, String>,
    down: bool,
}

impl<'a> Running<'a> {
    fn up(
        docker: &'a Docker,
        project: &ComposeProject,
        images: &'a BTreeMap<String, String>,
    ) -> Self {
        let running = Self {
            docker,
            file: project.file.clone(),
            images,
            down: false,
        };
        // The images are built here: nothing may be pulled from a registry.
        docker::run(
            running
                .compose()
                .args(["up", "--detach", "--pull", "never"]),
        )
        .unwrap();
        running
    }

    fn compose(&self) -> std::process::Command {
        let mut command = self.docker.compose();
        command
            .arg("--file")
            .arg(&self.file)
            .args(["--project-name", PROJECT])
            .envs(self.images);
        command
    }

    fn ps(&self) -> String {
        docker::run(self.compose().args(["ps", "--all"])).unwrap_or_else(|err| format!("{err:#}"))
    }

    /// `compose down`, then no container of the project may be left.
    fn down(mut self) {
        self.down = true;
        docker::run(self.compose().args(["down", "--timeout", "10"])).unwrap();
        let left = docker::run(self.docker.docker().args([
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("label=com.docker.compose.project={PROJECT}"),
        ]))
        .unwrap();
        assert_eq!(left.trim(), "", "containers left after compose down");
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        if let Ok(logs) = docker::run(self.compose().args(["logs", "--no-color", "--tail", "60"])) {
            eprintln!("container logs:\n{logs}");
        }
        let _ = docker::run(self.compose().args(["down", "--timeout", "10"]));
    }
}

struct Ingress {
    url: String,
    agent: ureq::Agent,
}

impl Ingress {
    fn order(&self, user: &str, claims: Value, headers: &[(&str, &str)]) -> Response {
        let auth = mint_token::demo_bearer(user, claims).unwrap();
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        http::post_json(
            &self.agent,
            &format!("{}/orders", self.url),
            &json!({"sku": "sku-1", "quantity": 1, "user": user}),
            &all,
        )
        .unwrap()
    }
}

const TENANT: (&str, &str) = ("x-tenant-id", "acme");

/// Orders through the ingress, order's, inventory's and payment's sidecars;
/// returns how many were placed.
fn order_flow(ingress: &Ingress) -> usize {
    const ORDERS: usize = 5;
    for _ in 0..ORDERS {
        let response = ingress.order("alice", json!({}), &[TENANT]);
        assert_eq!(response.status, 201, "{}", response.body);
        let body = response.json().unwrap();
        assert_eq!(body["status"], "confirmed", "{body}");
        assert!(body["charge_id"].is_string(), "{body}");
    }
    ORDERS
}

fn authz_answers_401_and_403(ingress: &Ingress) {
    let anonymous = http::post_json(
        &ingress.agent,
        &format!("{}/orders", ingress.url),
        &json!({"sku": "sku-1", "quantity": 1, "user": "alice"}),
        &[],
    )
    .unwrap();
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(
        anonymous.json().unwrap()["type"],
        "urn:meshwasm:problem:token-missing"
    );
    let alice = mint_token::demo_bearer("alice", json!({})).unwrap();
    let delete = http::send(
        &ingress.agent,
        "DELETE",
        &format!("{}/orders/1", ingress.url),
        "",
        &[("authorization", &alice)],
    )
    .unwrap();
    assert_eq!(delete.status, 403, "{}", delete.body);
}

/// Sticky weighted canary (wasmplugin-routing.yaml): a user's bucket is fixed,
/// so these users always split the same way; a `beta` claim goes to v2.
fn canary_splits_users_between_inventory_versions(ingress: &Ingress) {
    let mut versions: BTreeMap<String, usize> = BTreeMap::new();
    for index in 0..40 {
        let user = format!("user-{index}");
        let response = ingress.order(&user, json!({}), &[("x-user", &user)]);
        assert_eq!(response.status, 201, "{}", response.body);
        let body = response.json().unwrap();
        let version = body["inventory_version"].as_str().unwrap().to_owned();
        *versions.entry(version).or_default() += 1;
    }
    assert_eq!(
        versions.keys().collect::<Vec<_>>(),
        ["v1", "v2"],
        "{versions:?}"
    );
    assert!(versions["v1"] > versions["v2"], "{versions:?}");
    let beta = ingress.order("bea", json!({"beta": true}), &[("x-user", "bea")]);
    assert_eq!(beta.json().unwrap()["inventory_version"], "v2");
}

/// Payment fails every charge: order's breaker (wasmplugin-circuit-breaker.yaml)
/// opens and answers for payment; payment healed, orders succeed again.
fn breaker_opens_on_failing_payment(ingress: &Ingress, payment_app: &str) {
    let faults = |rate: f64| {
        let response = http::post_json(
            &ingress.agent,
            &format!("{payment_app}/faults"),
            &json!({"error_rate": rate}),
            &[],
        )
        .unwrap();
        assert_eq!(response.status, 200, "{}", response.body);
    };
    faults(1.0);
    let opened = (0..20).find_map(|_| {
        let response = ingress.order("alice", json!({}), &[]);
        assert_eq!(response.status, 503, "{}", response.body);
        (response.header("x-meshwasm-breaker") == Some("open")).then_some(response)
    });
    let rejection = opened.expect("the breaker never opened");
    assert_eq!(
        rejection.json().unwrap()["upstream_body"]["type"],
        "urn:meshwasm:problem:circuit-open"
    );
    faults(0.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ingress.order("alice", json!({}), &[]).status != 201 {
        assert!(Instant::now() < deadline, "orders never succeeded again");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The telemetry filter's RED counter at the ingress counts exactly the
/// orders of the tenant (`/stats/prometheus` of the gateway container).
fn telemetry_counts_the_orders(ingress_admin: &str, orders: usize) {
    let want = [
        ("reporter", "outbound"),
        ("route", "/orders"),
        ("response_code", "201"),
        ("tenant", "acme"),
    ];
    let url = format!("{ingress_admin}/stats/prometheus");
    let deadline = Instant::now() + Duration::from_secs(30);
    let counted = loop {
        let text = http::get(&http::agent(), &url, &[]).unwrap().body;
        let counted = total(&text, "meshwasm_requests_total", &want);
        if counted >= orders as f64 || Instant::now() > deadline {
            break counted;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(counted, orders as f64);
}
