//! `WasmPlugin` → Envoy HTTP filters, following istiod and istio-agent
//! (Istio 1.30 and 1.31; 1.29's names on request). Each rule cites the code it
//! follows.

use crate::istio::WasmPluginSpec;
pub use crate::oci::{FetchError, ModuleStore};
use crate::oci::{FetchRequest, PullPolicy, PullSecret};
use crate::resources::{labels_match, Resource, ROOT_NAMESPACE};
use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Where a filter chain sits, which decides `match.mode`
/// (pilot/pkg/model/extensions.go `workloadModeForListenerClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerClass {
    SidecarInbound,
    SidecarOutbound,
    Gateway,
}

impl ListenerClass {
    /// Gateways count as CLIENT, so `mode: SERVER` never applies to them.
    fn workload_mode(self) -> &'static str {
        match self {
            Self::SidecarInbound => "SERVER",
            Self::SidecarOutbound | Self::Gateway => "CLIENT",
        }
    }
}

/// Filter-chain phases in chain order (pilot/pkg/networking/core/listener_builder.go:
/// AUTHN, then jwt_authn, AUTHZ, then rbac, then STATS and UNSPECIFIED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Authn,
    Authz,
    Stats,
    Unspecified,
}

impl Phase {
    fn parse(text: Option<&str>) -> Result<Self> {
        Ok(match text.unwrap_or("UNSPECIFIED_PHASE") {
            "AUTHN" => Self::Authn,
            "AUTHZ" => Self::Authz,
            "STATS" => Self::Stats,
            "UNSPECIFIED_PHASE" => Self::Unspecified,
            other => bail!("unknown phase {other}"),
        })
    }
}

/// The Istio release whose istiod the local mesh emulates: the names it gives
/// Envoy resources differ between releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IstioRelease {
    minor: u32,
}

impl IstioRelease {
    /// Istio 1.30 and 1.31 are supported; 1.28 and 1.29 are end of life but
    /// can still be emulated.
    pub const SUPPORTED: [&'static str; 4] = ["1.28", "1.29", "1.30", "1.31"];
    pub const NEWEST: Self = Self { minor: 31 };
    /// Environment variable that picks the release (`1.30`, or `1.30.3`).
    pub const ENV: &'static str = "MESHWASM_ISTIO_VERSION";

    pub fn parse(text: &str) -> Result<Self> {
        let minor = text
            .strip_prefix("1.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|minor| minor.parse().ok())
            .filter(|minor| (28..=31).contains(minor));
        match minor {
            Some(minor) => Ok(Self { minor }),
            None => bail!(
                "cannot emulate Istio {text:?}; the local mesh knows {}",
                Self::SUPPORTED.join(", ")
            ),
        }
    }

    /// A WasmPlugin's name in Envoy (the proxy-wasm `plugin_name`, the prefix
    /// of its `wasm log` lines): `<ns>.<name>`; since 1.30 istiod translates each
    /// WasmPlugin into a synthetic TrafficExtension whose name has a suffix
    /// (pilot/pkg/config/kube/extensions/translate.go, pilot/pkg/model/extensions.go).
    pub fn plugin_name(self, namespace: &str, name: &str) -> String {
        if self.minor >= 30 {
            format!("{namespace}.{name}~istio-translated-wasmplugin")
        } else {
            format!("{namespace}.{name}")
        }
    }

    /// A WasmPlugin's HTTP filter and ECDS resource name.
    pub fn filter_name(self, namespace: &str, name: &str) -> String {
        let kind = if self.minor >= 30 {
            "trafficextension"
        } else {
            "wasmplugin"
        };
        format!(
            "extensions.istio.io/{kind}/{}",
            self.plugin_name(namespace, name)
        )
    }
}

impl std::fmt::Display for IstioRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "1.{}", self.minor)
    }
}

#[derive(Debug, Clone)]
pub struct Plugin {
    pub name: String,
    pub namespace: String,
    pub source: String,
    pub phase: Phase,
    pub spec: WasmPluginSpec,
    pub release: IstioRelease,
    pub pull_secret: PullSecret,
}

impl Plugin {
    /// The plugin's name in Envoy (see [`IstioRelease::plugin_name`]).
    pub fn resource_name(&self) -> String {
        self.release.plugin_name(&self.namespace, &self.name)
    }

    /// The local ECDS file of this plugin.
    pub fn ecds_file_name(&self) -> String {
        format!("{}.{}.json", self.namespace, self.name)
    }

    /// The filter and ECDS resource name.
    pub fn filter_name(&self) -> String {
        self.release.filter_name(&self.namespace, &self.name)
    }

    /// The kinds of the plugin's `targetRefs` (and deprecated `targetRef`).
    fn target_ref_kinds(&self) -> Vec<&str> {
        self.spec
            .target_refs
            .iter()
            .chain(&self.spec.target_ref)
            .map(|target| target.get("kind").and_then(Value::as_str).unwrap_or("?"))
            .collect()
    }

    /// Sidecars and the classic ingress gateway (every proxy of the local
    /// mesh) ignore a policy with targetRefs, silently in a cluster.
    pub fn ignored_for_target_refs(&self) -> Option<String> {
        let kinds = self.target_ref_kinds();
        (!kinds.is_empty()).then(|| {
            format!(
                "WasmPlugin {}/{} applies to no proxy: it sets targetRefs ({}), which sidecars and the \
                 classic ingress gateway ignore (pilot/pkg/model/policyattachment.go); only Gateway API \
                 gateways and waypoints use them. Select sidecars with selector.matchLabels",
                self.namespace,
                self.name,
                kinds.join(", ")
            )
        })
    }

    fn fail_open(&self) -> bool {
        self.spec.fail_strategy.as_deref() == Some("FAIL_OPEN")
    }
}

/// Reads every WasmPlugin, refusing what istiod's validation would refuse.
pub fn load(resources: &[Resource], release: IstioRelease) -> Result<Vec<Plugin>> {
    resources
        .iter()
        .filter(|r| r.group() == "extensions.istio.io" && r.kind == "WasmPlugin")
        .map(|resource| {
            let spec: WasmPluginSpec = resource.spec()?;
            let context = |message: String| {
                anyhow::anyhow!(
                    "{}: WasmPlugin {}: {message}",
                    resource.source,
                    resource.name
                )
            };
            if spec.url.is_empty() {
                return Err(context("url is required".into()));
            }
            if spec
                .plugin_type
                .as_deref()
                .is_some_and(|t| t != "HTTP" && t != "UNSPECIFIED_PLUGIN_TYPE")
            {
                return Err(context("only HTTP plugins run in the local mesh".into()));
            }
            // pkg/config/validation: env names unique, HOST values carry no `value`.
            let mut names = std::collections::HashSet::new();
            for var in spec.vm_config.iter().flat_map(|vm| &vm.env) {
                if !names.insert(var.name.as_str()) {
                    return Err(context(format!("duplicate vmConfig env {}", var.name)));
                }
                if var.value_from.as_deref() == Some("HOST") && var.value.is_some() {
                    return Err(context(format!(
                        "vmConfig env {} has valueFrom HOST and a value",
                        var.name
                    )));
                }
            }
            let phase =
                Phase::parse(spec.phase.as_deref()).map_err(|err| context(err.to_string()))?;
            let pull_secret = pull_secret(
                resources,
                &resource.namespace,
                spec.image_pull_secret.as_deref(),
            );
            Ok(Plugin {
                name: resource.name.clone(),
                namespace: resource.namespace.clone(),
                source: resource.source.clone(),
                phase,
                spec,
                release,
                pull_secret,
            })
        })
        .collect()
}

/// istiod resolves `imagePullSecret` (`name`, or `namespace/name` with the
/// namespace forced to the plugin's, pilot/pkg/model/extensions.go) to a
/// `kubernetes.io/dockerconfigjson` Secret's `.dockerconfigjson`
/// (credentials controller `GetDockerCredential`); anything else is missing.
fn pull_secret(resources: &[Resource], namespace: &str, name: Option<&str>) -> PullSecret {
    let Some(name) = name.filter(|name| !name.is_empty()) else {
        return PullSecret::None;
    };
    let short = name.rsplit('/').next().unwrap_or(name);
    resources
        .iter()
        .find(|r| {
            r.kind == "Secret"
                && r.group().is_empty()
                && r.namespace == namespace
                && r.name == short
        })
        .filter(|secret| secret.body["type"] == "kubernetes.io/dockerconfigjson")
        .and_then(|secret| {
            let string_data = secret.body["stringData"][".dockerconfigjson"].as_str();
            let data = secret.body["data"][".dockerconfigjson"].as_str();
            match (string_data, data) {
                (Some(text), _) => Some(text.as_bytes().to_vec()),
                (None, Some(encoded)) => {
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded).ok()
                }
                (None, None) => None,
            }
        })
        .map_or_else(
            || PullSecret::Missing(format!("{namespace}/{short}")),
            PullSecret::DockerConfig,
        )
}

/// The proxy a filter chain is being built for.
pub struct ProxyView<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// The plugins for one listener, in filter-chain order.
pub fn select<'a>(
    plugins: &'a [Plugin],
    proxy: &ProxyView<'_>,
    class: ListenerClass,
    port: u16,
) -> Vec<&'a Plugin> {
    let mut chosen: Vec<&Plugin> = plugins
        .iter()
        .filter(|plugin| selects_proxy(plugin, proxy) && matches_listener(plugin, class, port))
        .collect();
    // Candidates come from the proxy's namespace, then the root namespace, each
    // by creation timestamp (whole seconds), then name, then namespace
    // (pilot/pkg/model/push_context.go, config.go configCompareByCreationTime);
    // then a stable sort by priority, higher first, unset counting as MinInt32
    // (sortByPriority). `kubectl apply -f` creates a folder's objects within
    // the same second, as the local mesh does, so ties resolve by name.
    chosen.sort_by(|a, b| {
        (a.namespace != proxy.namespace, &a.name, &a.namespace).cmp(&(
            b.namespace != proxy.namespace,
            &b.name,
            &b.namespace,
        ))
    });
    chosen.sort_by_key(|plugin| {
        (
            plugin.phase,
            std::cmp::Reverse(plugin.spec.priority.unwrap_or(i32::MIN)),
        )
    });
    chosen
}

/// pilot/pkg/model/policyattachment.go: a policy applies to proxies of its own
/// namespace, or of every namespace from the root namespace; sidecars and the
/// classic ingress gateway ignore policies that use targetRefs.
fn selects_proxy(plugin: &Plugin, proxy: &ProxyView<'_>) -> bool {
    if plugin.namespace != proxy.namespace && plugin.namespace != ROOT_NAMESPACE {
        return false;
    }
    if !plugin.target_ref_kinds().is_empty() {
        return false;
    }
    plugin
        .spec
        .selector
        .as_ref()
        .is_none_or(|selector| labels_match(&selector.match_labels, proxy.labels))
}

/// pilot/pkg/model/extensions.go `matchTrafficSelectors`: no selector, or any
/// selector whose mode and ports fit the listener.
fn matches_listener(plugin: &Plugin, class: ListenerClass, port: u16) -> bool {
    plugin.spec.traffic_match.is_empty()
        || plugin.spec.traffic_match.iter().any(|selector| {
            let mode_fits = match selector.mode.as_deref() {
                None | Some("UNDEFINED") | Some("CLIENT_AND_SERVER") => true,
                Some(mode) => mode == class.workload_mode(),
            };
            let port_fits = selector.ports.is_empty()
                || selector.ports.iter().any(|p| p.number == u32::from(port));
            mode_fits && port_fits
        })
}

/// The ECDS resource Envoy gets for a plugin: the wasm filter as istio-agent
/// rewrites it (local file), or on a fetch failure the RBAC filter the agent
/// substitutes: allow-all for FAIL_OPEN, deny-all otherwise (pkg/wasm/convert.go).
/// `resource_version` stands for the WasmPlugin's resourceVersion (a new one
/// per applied edit), which decides re-pulls (see [`crate::oci::ignore_resource_version`]).
pub fn extension_config(
    plugin: &Plugin,
    modules: &mut ModuleStore,
    resource_version: u64,
) -> (Value, Option<FetchError>) {
    let request = FetchRequest {
        url: &plugin.spec.url,
        sha256: plugin.spec.sha256.as_deref(),
        resource_name: &plugin.filter_name(),
        resource_version: &resource_version.to_string(),
        pull_policy: PullPolicy::parse(plugin.spec.image_pull_policy.as_deref()),
        pull_secret: &plugin.pull_secret,
    };
    let (typed_config, error) = match modules.resolve(&request) {
        Ok(path) => (wasm_config(plugin, &path), None),
        Err(err) if plugin.fail_open() => (
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC", "rules_stat_prefix": "wasm-default-allow"}),
            Some(err),
        ),
        Err(err) => (
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC", "rules": {}, "rules_stat_prefix": "wasm-default-deny"}),
            Some(err),
        ),
    };
    let resource = json!({
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": plugin.filter_name(),
        "typed_config": typed_config,
    });
    (resource, error)
}

/// The file-based ECDS response holding one extension config.
pub fn discovery_response(resource: Value, version: u64) -> Value {
    json!({"version_info": version.to_string(), "resources": [resource]})
}

/// The LDS side: a filter that waits for its config from ECDS, with Istio's
/// type URLs (wasm, or the RBAC fallback) and no initial-fetch timeout
/// (pilot/pkg/networking/core/extension/extensionfilter.go). Locally the
/// ECDS source is a file that Envoy watches.
pub fn filter_stub(plugin: &Plugin, ecds_file: &Path) -> Value {
    json!({
        "name": plugin.filter_name(),
        "config_discovery": {
            "config_source": {
                "path_config_source": {"path": ecds_file.display().to_string()},
                "initial_fetch_timeout": "0s",
                "resource_api_version": "V3",
            },
            "type_urls": [
                "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            ],
        },
    })
}

fn wasm_config(plugin: &Plugin, module: &Path) -> Value {
    let spec = &plugin.spec;
    let mut config = Map::new();
    config.insert("name".into(), json!(plugin.resource_name()));
    if let Some(root_id) = spec.plugin_name.as_deref().filter(|name| !name.is_empty()) {
        config.insert("root_id".into(), json!(root_id));
    }
    // An empty pluginConfig gives an empty Any: the plugin sees 0 bytes.
    if let Some(plugin_config) = spec.plugin_config.as_ref().filter(|map| !map.is_empty()) {
        config.insert(
            "configuration".into(),
            json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": go_jsonpb(&Value::Object(plugin_config.clone()))}),
        );
    }
    // istiod's buildWasmConfig (pilot/pkg/model/extensions.go): FAIL_OPEN,
    // FAIL_CLOSE and FAIL_RELOAD (API since Istio 1.27, so in every release
    // emulated here) map one to one to Envoy's failure_policy, which is always
    // set (FAIL_CLOSED by default); the deprecated `fail_open` bool is not
    // (1.28 set it only for proxies older than 1.25, 1.29 dropped it).
    let failure_policy = match spec.fail_strategy.as_deref() {
        Some("FAIL_OPEN") => "FAIL_OPEN",
        Some("FAIL_RELOAD") => "FAIL_RELOAD",
        _ => "FAIL_CLOSED",
    };
    config.insert("failure_policy".into(), json!(failure_policy));
    let mut vm = json!({
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": module.display().to_string()}},
    });
    // INLINE env become key_values, HOST env host_env_keys. istio-agent strips
    // ISTIO_META_* keys from remote modules only: it passes file:// modules
    // through untouched (pkg/wasm/convert.go). An empty block is dropped.
    let remote = !spec.url.starts_with("file://");
    let mut key_values = Map::new();
    let mut host_keys = Vec::new();
    for var in spec.vm_config.iter().flat_map(|vm| &vm.env) {
        if remote && var.name.starts_with("ISTIO_META_") {
            continue;
        }
        if var.value_from.as_deref() == Some("HOST") {
            host_keys.push(json!(var.name));
        } else {
            key_values.insert(
                var.name.clone(),
                json!(var.value.clone().unwrap_or_default()),
            );
        }
    }
    if !key_values.is_empty() || !host_keys.is_empty() {
        vm["environment_variables"] = json!({"key_values": key_values, "host_env_keys": host_keys});
    }
    config.insert("vm_config".into(), vm);
    json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config})
}

/// `pluginConfig` as istiod encodes it (protomarshal.ToJSON, legacy jsonpb):
/// compact, keys sorted bytewise, numbers as float64 printed like Go's
/// encoding/json, and `<`, `>`, `&`, U+2028, U+2029 escaped.
pub fn go_jsonpb(value: &Value) -> String {
    let mut out = String::new();
    write_go_json(value, &mut out);
    out
}

fn write_go_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(number) => out.push_str(&go_float(number.as_f64().unwrap_or(0.0))),
        Value::String(text) => write_go_string(text, out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_go_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_go_string(key, out);
                out.push(':');
                write_go_json(item, out);
            }
            out.push('}');
        }
    }
}

fn write_go_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Go's `strconv.FormatFloat(f, 'f' or 'e', -1, 64)` as encoding/json picks it.
fn go_float(value: f64) -> String {
    let abs = value.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let text = format!("{value:e}");
        match text.split_once('e') {
            Some((mantissa, exponent)) if !exponent.starts_with('-') => {
                format!("{mantissa}e+{exponent}")
            }
            _ => text,
        }
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_documents;

    fn plugins(yaml: &str) -> Vec<Plugin> {
        load(
            &parse_documents("p.yaml", yaml, 0).unwrap(),
            IstioRelease::NEWEST,
        )
        .unwrap()
    }

    fn plugin_doc(name: &str, namespace: &str, extra: &str) -> String {
        format!("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  url: oci://ghcr.io/x/{name}:1\n{extra}\n---\n")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(chosen: Vec<&Plugin>) -> Vec<&str> {
        chosen.into_iter().map(|p| p.name.as_str()).collect()
    }

    /// The plugins chosen for a listener of an unlabelled proxy in `shop`.
    fn in_shop(all: &[Plugin], class: ListenerClass, port: u16) -> Vec<&str> {
        let none = labels(&[]);
        let proxy = ProxyView {
            namespace: "shop",
            labels: &none,
        };
        names(select(all, &proxy, class, port))
    }

    #[test]
    fn selection_by_namespace_root_namespace_and_labels() {
        let all = plugins(
            &[
                plugin_doc("mine", "shop", "  selector: {matchLabels: {app: order}}"),
                plugin_doc(
                    "other-app",
                    "shop",
                    "  selector: {matchLabels: {app: payment}}",
                ),
                plugin_doc("other-ns", "bank", ""),
                plugin_doc("mesh-wide", "istio-system", ""),
                plugin_doc(
                    "targeted",
                    "shop",
                    "  targetRefs: [{kind: Service, name: order}]",
                ),
            ]
            .concat(),
        );
        let order = labels(&[("app", "order")]);
        let proxy = ProxyView {
            namespace: "shop",
            labels: &order,
        };
        assert_eq!(
            names(select(&all, &proxy, ListenerClass::SidecarInbound, 8080)),
            vec!["mine", "mesh-wide"]
        );
    }

    #[test]
    fn match_mode_and_ports() {
        let all = plugins(
            &[
                plugin_doc("server", "shop", "  match: [{mode: SERVER}]"),
                plugin_doc("client", "shop", "  match: [{mode: CLIENT}]"),
                plugin_doc(
                    "both",
                    "shop",
                    "  match: [{mode: CLIENT_AND_SERVER, ports: [{number: 9090}]}]",
                ),
                plugin_doc("port", "shop", "  match: [{ports: [{number: 8080}]}]"),
            ]
            .concat(),
        );
        assert_eq!(
            in_shop(&all, ListenerClass::SidecarInbound, 8080),
            vec!["port", "server"]
        );
        assert_eq!(
            in_shop(&all, ListenerClass::SidecarOutbound, 9090),
            vec!["both", "client"]
        );
        // Gateways are CLIENT: mode SERVER never applies to them.
        assert_eq!(
            in_shop(&all, ListenerClass::Gateway, 8080),
            vec!["client", "port"]
        );
    }

    #[test]
    fn ties_resolve_by_name_not_by_file_order() {
        let all = plugins(
            &[
                plugin_doc("zeta", "shop", "  priority: 5"),
                plugin_doc("alpha", "shop", "  priority: 5"),
                plugin_doc("mid", "shop", "  priority: 5"),
            ]
            .concat(),
        );
        assert_eq!(
            in_shop(&all, ListenerClass::SidecarInbound, 8080),
            vec!["alpha", "mid", "zeta"]
        );
    }

    #[test]
    fn names_follow_the_emulated_istio_release() {
        let resources = parse_documents("p.yaml", &plugin_doc("authz", "shop", ""), 0).unwrap();
        let named = |version: &str| {
            let release = IstioRelease::parse(version).unwrap();
            let [plugin] = load(&resources, release).unwrap().try_into().unwrap();
            (plugin.filter_name(), plugin.resource_name())
        };
        for version in ["1.30", "1.31", "1.30.3"] {
            assert_eq!(
                named(version),
                (
                    "extensions.istio.io/trafficextension/shop.authz~istio-translated-wasmplugin"
                        .to_string(),
                    "shop.authz~istio-translated-wasmplugin".to_string()
                )
            );
        }
        for version in ["1.28", "1.29", "1.29.6"] {
            assert_eq!(
                named(version),
                (
                    "extensions.istio.io/wasmplugin/shop.authz".to_string(),
                    "shop.authz".to_string()
                )
            );
        }
        for unknown in ["1.27", "1.32", "2.0", "latest", ""] {
            assert!(IstioRelease::parse(unknown).is_err(), "{unknown}");
        }
        assert_eq!(IstioRelease::NEWEST.to_string(), "1.31");
    }

    #[test]
    fn target_refs_are_ignored_with_a_reason() {
        let all = plugins(
            &[
                plugin_doc(
                    "targeted",
                    "shop",
                    "  targetRefs: [{kind: Gateway, name: gw}]",
                ),
                plugin_doc(
                    "selected",
                    "shop",
                    "  selector: {matchLabels: {app: order}}",
                ),
            ]
            .concat(),
        );
        let reason = all[0].ignored_for_target_refs().unwrap();
        assert!(
            reason.contains("WasmPlugin shop/targeted applies to no proxy"),
            "{reason}"
        );
        assert!(reason.contains("targetRefs (Gateway)"), "{reason}");
        assert_eq!(all[1].ignored_for_target_refs(), None);
    }

    #[test]
    fn istio_meta_env_survives_only_for_file_modules() {
        let env =
            "  vmConfig:\n    env: [{name: ISTIO_META_X, value: y}, {name: MODE, value: strict}]";
        let local = plugins(&plugin_doc("local", "shop", env).replace(
            "url: oci://ghcr.io/x/local:1",
            "url: file:///opt/local.wasm",
        ));
        let mut store = ModuleStore::new(std::env::temp_dir(), None, None).unwrap();
        let (filter, err) = extension_config(&local[0], &mut store, 1);
        assert!(err.is_none());
        assert_eq!(
            filter["typed_config"]["config"]["vm_config"]["environment_variables"]["key_values"],
            serde_json::json!({"ISTIO_META_X": "y", "MODE": "strict"})
        );
    }

    #[test]
    fn phase_then_priority_then_namespace_then_name() {
        let all = plugins(
            &[
                plugin_doc("stats", "shop", "  phase: STATS\n  priority: 100"),
                plugin_doc("unset-priority", "shop", "  phase: AUTHN"),
                plugin_doc("negative", "shop", "  phase: AUTHN\n  priority: -5"),
                plugin_doc(
                    "root-high",
                    "istio-system",
                    "  phase: AUTHN\n  priority: 10",
                ),
                plugin_doc("tie-root", "istio-system", "  phase: AUTHN\n  priority: 1"),
                plugin_doc("tie-local-late", "shop", "  phase: AUTHN\n  priority: 1"),
                plugin_doc("unspecified", "shop", ""),
                plugin_doc("authz", "shop", "  phase: AUTHZ"),
            ]
            .concat(),
        );
        assert_eq!(
            in_shop(&all, ListenerClass::SidecarInbound, 8080),
            vec![
                "root-high",
                "tie-local-late",
                "tie-root",
                "negative",
                "unset-priority",
                "authz",
                "stats",
                "unspecified"
            ]
        );
    }

    #[test]
    fn invalid_plugins_are_refused() {
        for (extra, message) in [
            ("  phase: EARLY", "unknown phase"),
            (
                "  vmConfig: {env: [{name: A, value: x}, {name: A, value: y}]}",
                "duplicate",
            ),
            (
                "  vmConfig: {env: [{name: A, valueFrom: HOST, value: x}]}",
                "HOST",
            ),
            ("  type: NETWORK", "only HTTP"),
        ] {
            let resources =
                parse_documents("p.yaml", &plugin_doc("bad", "shop", extra), 0).unwrap();
            let err = load(&resources, IstioRelease::NEWEST)
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{extra}: {err}");
            assert!(err.contains("WasmPlugin bad"), "{err}");
        }
    }

    #[test]
    fn plugin_config_is_encoded_like_istiod() {
        let config = serde_json::json!({"b": "x<y&z>", "a": 5, "n": {"z": true, "y": null}, "f": 1.5, "big": 1e21, "tiny": 1e-7, "list": [1, "2"]});
        assert_eq!(
            go_jsonpb(&config),
            r#"{"a":5,"b":"x\u003cy\u0026z\u003e","big":1e+21,"f":1.5,"list":[1,"2"],"n":{"y":null,"z":true},"tiny":1e-7}"#
        );
    }

    /// A store whose `https://` modules come from a file server on a
    /// folder holding `authz.wasm`; no registry (oci:// URLs fail).
    fn store_with(module: &[u8]) -> (tempdir::Dir, crate::registry::FileServer, ModuleStore) {
        let dir = tempdir::Dir::new();
        std::fs::write(dir.path().join("authz.wasm"), module).unwrap();
        let server = crate::registry::FileServer::start(dir.path()).unwrap();
        let store =
            ModuleStore::new(dir.path().join("cache"), None, Some(server.address.clone())).unwrap();
        (dir, server, store)
    }

    fn remote(doc: String) -> String {
        doc.replace(
            "url: oci://ghcr.io/x/authz:1",
            "url: https://modules.example/m/authz.wasm",
        )
    }

    #[test]
    fn https_modules_are_fetched_checked_and_cached() {
        let module = b"\0asm\x01\0\0\0";
        let (_dir, _server, mut store) = store_with(module);
        let sha = crate::oci::sha256_hex(module);
        for extra in [
            String::new(),
            format!("  sha256: {sha}"),
            "  sha256: nil".into(),
        ] {
            let all = plugins(&remote(plugin_doc("authz", "shop", &extra)));
            let (filter, err) = extension_config(&all[0], &mut store, 1);
            assert!(err.is_none(), "{extra}: {err:?}");
            let file = filter["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]
                .as_str()
                .unwrap();
            assert!(file.ends_with(&format!("{sha}.wasm")), "{file}");
        }
        // Downloaded once: the sha256 pin and the URL's checksum hit the cache.
        assert_eq!(store.pulls.len(), 1);
        let wrong = plugins(&remote(plugin_doc(
            "authz",
            "shop",
            &format!("  sha256: {}", "0".repeat(64)),
        )));
        let (_, err) = extension_config(&wrong[0], &mut store, 1);
        assert!(err.unwrap().0.contains("which does not match"));
        let missing = plugins(
            &plugin_doc("missing", "shop", "")
                .replace("oci://ghcr.io/x/missing:1", "https://h/missing.wasm"),
        );
        let (_, err) = extension_config(&missing[0], &mut store, 1);
        assert!(err.unwrap().0.contains("status code 404"));
    }

    #[test]
    fn a_non_wasm_download_is_a_fetch_failure() {
        let (_dir, _server, mut store) = store_with(b"<html>not found</html>");
        let all = plugins(&remote(plugin_doc("authz", "shop", "")));
        let (_, err) = extension_config(&all[0], &mut store, 1);
        assert!(err.unwrap().0.contains("is invalid"));
    }

    #[test]
    fn pull_secrets_come_from_dockerconfigjson_secrets_of_the_plugin_namespace() {
        let secret = |namespace: &str, kind: &str| {
            format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: regcred, namespace: {namespace}}}\ntype: {kind}\ndata: {{.dockerconfigjson: e30=}}\n---\n")
        };
        let with = |docs: &[String], reference: &str| {
            let doc = plugin_doc("p", "shop", &format!("  imagePullSecret: {reference}"));
            plugins(&[docs.concat(), doc].concat())[0]
                .pull_secret
                .clone()
        };
        let good = secret("shop", "kubernetes.io/dockerconfigjson");
        assert_eq!(
            with(std::slice::from_ref(&good), "regcred"),
            PullSecret::DockerConfig(b"{}".to_vec())
        );
        assert_eq!(
            with(&[good], "other/regcred"),
            PullSecret::DockerConfig(b"{}".to_vec())
        );
        for docs in [
            vec![],
            vec![secret("bank", "kubernetes.io/dockerconfigjson")],
            vec![secret("shop", "Opaque")],
        ] {
            assert_eq!(
                with(&docs, "regcred"),
                PullSecret::Missing("shop/regcred".into())
            );
        }
        assert_eq!(
            plugins(&plugin_doc("p", "shop", ""))[0].pull_secret,
            PullSecret::None
        );
    }

    #[test]
    fn fetch_failure_becomes_rbac_per_fail_strategy() {
        let mut store = ModuleStore::new(std::env::temp_dir(), None, None).unwrap();
        let all = plugins(
            &[
                plugin_doc("closed", "shop", ""),
                plugin_doc("open", "shop", "  failStrategy: FAIL_OPEN"),
            ]
            .concat(),
        );
        let (closed, err) = extension_config(&all[0], &mut store, 1);
        assert!(err.is_some());
        assert_eq!(
            closed["typed_config"]["rules_stat_prefix"],
            "wasm-default-deny"
        );
        assert_eq!(closed["typed_config"]["rules"], serde_json::json!({}));
        assert_eq!(
            closed["name"],
            "extensions.istio.io/trafficextension/shop.closed~istio-translated-wasmplugin"
        );
        let (open, _) = extension_config(&all[1], &mut store, 1);
        assert_eq!(
            open["typed_config"]["rules_stat_prefix"],
            "wasm-default-allow"
        );
        assert!(open["typed_config"].get("rules").is_none());
    }

    #[test]
    fn wasm_filter_carries_root_id_config_policy_and_env() {
        let (_dir, _server, mut store) = store_with(b"\0asm\x01\0\0\0");
        let all = plugins(&remote(plugin_doc(
            "authz",
            "shop",
            "  pluginName: authz_root\n  failStrategy: FAIL_OPEN\n  pluginConfig: {b: 1, a: x}\n  vmConfig:\n    env: [{name: POD_NAME, valueFrom: HOST}, {name: MODE, value: strict}, {name: ISTIO_META_X, value: y}]",
        )));
        let (filter, err) = extension_config(&all[0], &mut store, 1);
        assert!(err.is_none());
        let config = &filter["typed_config"]["config"];
        assert_eq!(config["root_id"], "authz_root");
        assert_eq!(config["name"], "shop.authz~istio-translated-wasmplugin");
        assert_eq!(config["failure_policy"], "FAIL_OPEN");
        assert_eq!(config["configuration"]["value"], r#"{"a":"x","b":1}"#);
        assert_eq!(config["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        assert!(config["vm_config"].get("vm_id").is_none());
        assert_eq!(
            config["vm_config"]["environment_variables"],
            serde_json::json!({"key_values": {"MODE": "strict"}, "host_env_keys": ["POD_NAME"]})
        );
    }

    #[test]
    fn every_fail_strategy_becomes_envoys_failure_policy_in_every_release() {
        let (_dir, _server, mut store) = store_with(b"\0asm\x01\0\0\0");
        for release in IstioRelease::SUPPORTED {
            for (strategy, policy) in [
                ("FAIL_CLOSE", "FAIL_CLOSED"),
                ("FAIL_OPEN", "FAIL_OPEN"),
                ("FAIL_RELOAD", "FAIL_RELOAD"),
            ] {
                let doc = remote(plugin_doc(
                    "authz",
                    "shop",
                    &format!("  failStrategy: {strategy}"),
                ));
                let resources = parse_documents("p.yaml", &doc, 0).unwrap();
                let plugin = &load(&resources, IstioRelease::parse(release).unwrap()).unwrap()[0];
                let (filter, _) = extension_config(plugin, &mut store, 1);
                let config = &filter["typed_config"]["config"];
                assert_eq!(
                    config["failure_policy"], policy,
                    "Istio {release}, {strategy}"
                );
                assert!(config.get("fail_open").is_none(), "Istio {release}");
            }
        }
    }

    #[test]
    fn defaults_fail_closed_without_config_or_env() {
        let (_dir, _server, mut store) = store_with(b"\0asm\x01\0\0\0");
        let all = plugins(&remote(plugin_doc("authz", "shop", "")));
        let (filter, _) = extension_config(&all[0], &mut store, 1);
        let config = &filter["typed_config"]["config"];
        assert_eq!(config["failure_policy"], "FAIL_CLOSED");
        assert!(config.get("configuration").is_none());
        assert!(config.get("root_id").is_none());
        assert!(config["vm_config"].get("environment_variables").is_none());
    }

    /// A self-removing temporary folder (no extra crate needed).
    mod tempdir {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicUsize, Ordering};

        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new() -> Self {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "meshwasm-test-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Self(path)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
