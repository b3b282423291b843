//! Prometheus beside the local mesh: Debian's `prometheus` binary, on
//! 127.0.0.1 only, scraping every Envoy's `/stats/prometheus` with the labels
//! a Kubernetes pod scrape adds (`namespace`, `pod` and the pod's labels, as
//! the `kubernetes-pods` job of Istio's sample Prometheus) and evaluating the
//! rule groups shipped in the manifests (`61-prometheus-rules.yaml`); and a
//! client of its HTTP API.

use crate::process::{free_ports, Supervised};
use crate::resources::Resource;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// Scrape and rule-evaluation interval: the mesh is small, and panels and
/// rules follow the traffic within seconds.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// The `prometheus` binary; default: the one on `PATH` (Debian's package).
pub const BINARY_ENV: &str = "MESHWASM_PROMETHEUS";

/// Every rule group of the manifests: the `groups` of each rules file in a
/// ConfigMap (data keys ending in `.rules.yaml`/`.rules.yml`) and of each
/// PrometheusRule's `spec`.
pub fn rule_groups(resources: &[Resource]) -> Result<Vec<Value>> {
    let mut groups = Vec::new();
    for resource in resources {
        let files: Vec<(String, Value)> = match resource.kind.as_str() {
            "PrometheusRule" => vec![(
                "spec".to_owned(),
                resource.body.get("spec").cloned().unwrap_or(Value::Null),
            )],
            "ConfigMap" => resource
                .body
                .get("data")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter(|(key, _)| key.ends_with(".rules.yaml") || key.ends_with(".rules.yml"))
                .map(|(key, text)| {
                    let text = text.as_str().unwrap_or_default();
                    let parsed = serde_yaml::from_str(text)
                        .with_context(|| format!("{}: data.{key} is not YAML", resource.source))?;
                    Ok((format!("data.{key}"), parsed))
                })
                .collect::<Result<_>>()?,
            _ => continue,
        };
        for (field, file) in files {
            let Some(list) = file.get("groups").and_then(Value::as_array) else {
                bail!(
                    "{}: {}/{} {field} has no `groups` list",
                    resource.source,
                    resource.kind,
                    resource.name
                );
            };
            groups.extend(list.iter().cloned());
        }
    }
    if groups.is_empty() {
        bail!("the manifests hold no Prometheus rule groups (a ConfigMap with a `*.rules.yaml` key, or a PrometheusRule)");
    }
    Ok(groups)
}

/// A Prometheus rules file of the manifests' groups, as shipped (`mesh rules`).
pub fn rules_file(resources: &[Resource]) -> Result<String> {
    Ok(serde_yaml::to_string(
        &json!({"groups": rule_groups(resources)?}),
    )?)
}

/// One Envoy to scrape, with the target labels of a Kubernetes pod scrape.
#[derive(Debug, Clone)]
pub struct ScrapeTarget {
    pub address: String,
    pub labels: BTreeMap<String, String>,
}

impl ScrapeTarget {
    /// The pod's labels (names made valid, as Kubernetes service discovery
    /// does), `namespace` and `pod`. Locally a Deployment is one pod named
    /// like it.
    pub fn pod(
        namespace: &str,
        pod: &str,
        pod_labels: &BTreeMap<String, String>,
        admin_port: u16,
    ) -> Self {
        let mut labels: BTreeMap<String, String> = pod_labels
            .iter()
            .map(|(name, value)| {
                let name = name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                (name, value.clone())
            })
            .collect();
        labels.insert("namespace".to_owned(), namespace.to_owned());
        labels.insert("pod".to_owned(), pod.to_owned());
        Self {
            address: format!("127.0.0.1:{admin_port}"),
            labels,
        }
    }
}

/// The configuration: every Envoy's admin `/stats/prometheus`, the rules file.
pub fn config(targets: &[ScrapeTarget], rules_file: &Path) -> Value {
    let interval = format!("{}s", INTERVAL.as_secs());
    json!({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [rules_file],
        "scrape_configs": [{
            "job_name": "envoy-stats",
            "metrics_path": "/stats/prometheus",
            "static_configs": targets
                .iter()
                .map(|target| json!({"targets": [target.address], "labels": target.labels}))
                .collect::<Vec<_>>(),
        }],
    })
}

/// Starts Prometheus in `run_dir/prometheus` and waits until it has scraped
/// every target. Rule groups are evaluated at [`INTERVAL`] instead of their
/// own `interval`, so recording rules follow a short test's traffic.
pub fn start(
    targets: &[ScrapeTarget],
    groups: &[Value],
    run_dir: &Path,
    timeout: Duration,
) -> Result<(Supervised, Prometheus)> {
    let binary = binary()?;
    let dir = run_dir.join("prometheus");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let groups: Vec<Value> = groups
        .iter()
        .cloned()
        .map(|mut group| {
            if let Some(group) = group.as_object_mut() {
                group.remove("interval");
            }
            group
        })
        .collect();
    let rules = dir.join("meshwasm.rules.yaml");
    std::fs::write(&rules, serde_yaml::to_string(&json!({"groups": groups}))?)?;
    // JSON is YAML.
    let config_path = dir.join("prometheus.yml");
    std::fs::write(
        &config_path,
        serde_json::to_vec_pretty(&config(targets, &rules))?,
    )?;
    let [port] = free_ports(1)?[..] else {
        bail!("no free port for Prometheus");
    };
    let mut command = Command::new(&binary);
    command
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let mut process = Supervised::spawn("prometheus", command, run_dir)?;
    let api = Prometheus::new(&format!("http://127.0.0.1:{port}"));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exited() {
            bail!(
                "prometheus exited ({status}); its log ({}):\n{}",
                process.log.display(),
                process.log_tail(40)
            );
        }
        if api.targets_up().is_ok_and(|up| up == targets.len()) {
            return Ok((process, api));
        }
        if Instant::now() > deadline {
            bail!(
                "prometheus had not scraped all {} Envoys after {timeout:?}; its log:\n{}",
                targets.len(),
                process.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(BINARY_ENV) {
        return Ok(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("prometheus"))
        .find(|path| path.is_file())
        .with_context(|| {
            format!("no `prometheus` on PATH: install Debian's prometheus package (`make prometheus`) or set {BINARY_ENV}")
        })
}

/// One series of an instant query's vector result.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Series {
    /// A label's value, empty when the series has no such label.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// A client of Prometheus's HTTP API (`/api/v1`).
#[derive(Clone)]
pub struct Prometheus {
    pub url: String,
    agent: ureq::Agent,
}

impl Prometheus {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build(),
            ),
        }
    }

    /// The `data` of a successful answer to GET `/api/v1/<path>`.
    pub fn get(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let url = format!("{}/api/v1/{path}", self.url);
        let mut request = self.agent.get(&url);
        for (key, value) in params {
            request = request.query(*key, *value);
        }
        let body: Value = request
            .call()
            .with_context(|| format!("GET {url}"))?
            .body_mut()
            .read_json()
            .with_context(|| format!("GET {url}: not JSON"))?;
        if body.get("status").and_then(Value::as_str) != Some("success") {
            bail!("GET {url} {params:?}: {body}");
        }
        Ok(body.get("data").cloned().unwrap_or(Value::Null))
    }

    /// An instant query's vector result (evaluated now).
    pub fn query(&self, expr: &str) -> Result<Vec<Series>> {
        self.query_data(&[("query", expr)], expr)
    }

    /// An instant query evaluated at `time` (Unix seconds).
    pub fn query_at(&self, expr: &str, time: f64) -> Result<Vec<Series>> {
        self.query_data(&[("query", expr), ("time", &format!("{time:.3}"))], expr)
    }

    fn query_data(&self, params: &[(&str, &str)], expr: &str) -> Result<Vec<Series>> {
        let data = self.get("query", params)?;
        if data.get("resultType").and_then(Value::as_str) != Some("vector") {
            bail!("`{expr}` is not a vector: {data}");
        }
        data.get("result")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|item| {
                let labels =
                    serde_json::from_value(item.get("metric").cloned().unwrap_or_default())?;
                let value = item
                    .pointer("/value/1")
                    .and_then(Value::as_str)
                    .and_then(|text| text.parse().ok())
                    .with_context(|| format!("`{expr}`: no value in {item}"))?;
                Ok(Series { labels, value })
            })
            .collect()
    }

    /// The single value of a query that must return exactly one series.
    pub fn scalar(&self, expr: &str) -> Result<f64> {
        match self.query(expr)?.as_slice() {
            [series] => Ok(series.value),
            other => bail!(
                "`{expr}` returned {} series, not one: {other:?}",
                other.len()
            ),
        }
    }

    /// How many scrape targets are up.
    fn targets_up(&self) -> Result<usize> {
        Ok(self.query("up == 1")?.len())
    }

    /// Waits until every target has been scraped, successfully, after `since`.
    pub fn wait_for_scrapes_after(&self, since: SystemTime, timeout: Duration) -> Result<()> {
        let since = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let deadline = Instant::now() + timeout;
        loop {
            // `timestamp(up)`: when each target was last scraped.
            let scrapes = self.query("timestamp(up) and up == 1")?;
            let all = self.query("up")?.len();
            if all > 0 && scrapes.len() == all && scrapes.iter().all(|s| s.value > since) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Prometheus targets not all scraped after {since} within {timeout:?}: {scrapes:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until Prometheus holds what every Envoy counted by now: a scrape
    /// of every target after this call, and the request histograms (flushed
    /// by Envoy every 5 s) as complete as the request counters.
    pub fn wait_caught_up(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        self.wait_for_scrapes_after(SystemTime::now(), timeout)?;
        let lag =
            "sum(meshwasm_requests_total) - sum(meshwasm_request_duration_milliseconds_count)";
        loop {
            let behind = self.scalar(lag)?;
            if behind == 0.0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("histograms still {behind} requests behind the counters after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    fn shipped() -> Vec<Resource> {
        resources::load_dir(&crate::mesh::repo_root().join("wasmplugin-manifests")).unwrap()
    }

    fn names(groups: &[Value], kind: &str) -> Vec<String> {
        groups
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .filter_map(|rule| rule.get(kind).and_then(Value::as_str).map(str::to_owned))
            .collect()
    }

    #[test]
    fn rule_groups_come_from_the_configmap_and_a_prometheusrule() {
        let groups = rule_groups(&shipped()).unwrap();
        assert!(names(&groups, "record").contains(&"route:meshwasm_requests:rate5m".to_owned()));
        assert!(names(&groups, "alert").contains(&"MeshwasmErrorBudgetFastBurn".to_owned()));

        let operator = resources::parse_documents(
            "rule.yaml",
            "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: r}\n\
             spec: {groups: [{name: g, rules: [{record: a:b, expr: up}]}]}\n",
            0,
        )
        .unwrap();
        assert_eq!(names(&rule_groups(&operator).unwrap(), "record"), ["a:b"]);
        let none = resources::parse_documents(
            "x.yaml",
            "kind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n",
            0,
        )
        .unwrap();
        assert!(rule_groups(&none).is_err());
    }

    /// Every recording rule and alert has a promtool unit test.
    #[test]
    fn every_rule_has_a_promtool_test() {
        let tests = std::fs::read_to_string(
            crate::mesh::repo_root().join("integration/promtool/meshwasm.rules.test.yaml"),
        )
        .unwrap();
        let tests: Value = serde_yaml::from_str(&tests).unwrap();
        let cases = tests["tests"].as_array().unwrap();
        let tested = |key: &str, field: &str| -> Vec<String> {
            cases
                .iter()
                .flat_map(|case| case[key].as_array().cloned().unwrap_or_default())
                .filter_map(|test| test[field].as_str().map(str::to_owned))
                .collect()
        };
        let exprs = tested("promql_expr_test", "expr");
        let alerts = tested("alert_rule_test", "alertname");
        let groups = rule_groups(&shipped()).unwrap();
        for record in names(&groups, "record") {
            assert!(
                exprs.iter().any(|expr| expr.contains(&record)),
                "no promql_expr_test of {record}"
            );
        }
        for alert in names(&groups, "alert") {
            assert!(alerts.contains(&alert), "no alert_rule_test of {alert}");
        }
    }

    #[test]
    fn targets_carry_the_pod_scrape_labels() {
        let labels = [
            ("app", "order"),
            ("version", "v1"),
            ("app.kubernetes.io/name", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let target = ScrapeTarget::pod("order-app", "order-v1", &labels, 15000);
        let config = config(&[target], Path::new("/r/rules.yaml"));
        let scrape = &config["scrape_configs"][0];
        assert_eq!(scrape["metrics_path"], "/stats/prometheus");
        assert_eq!(scrape["static_configs"][0]["targets"][0], "127.0.0.1:15000");
        assert_eq!(
            scrape["static_configs"][0]["labels"],
            json!({"app": "order", "version": "v1", "app_kubernetes_io_name": "x", "namespace": "order-app", "pod": "order-v1"})
        );
        assert_eq!(config["rule_files"][0], "/r/rules.yaml");
    }
}
