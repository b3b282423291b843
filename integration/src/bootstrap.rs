//! The Envoy bootstrap of one proxy: what a sidecar or the ingress gateway
//! holds once istiod's LDS/CDS and istio-agent's ECDS rewrite have arrived,
//! written as static config.

use crate::plugins::{self, ListenerClass, Plugin, ProxyView};
use crate::topology::{Topology, Workload, INGRESS_TARGET_PORT};
use crate::traffic::{RouteScope, TrafficConfig};
use anyhow::Result;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Tag names meshwasm filters put in their metric names (`tag=.=value;.;`);
/// each becomes a Prometheus label through an Envoy tag-extraction rule, as
/// Istio's `extraStatTags` does in a cluster.
pub const STAT_TAGS: &[&str] = &[
    "reporter",
    "source_workload",
    "destination_workload",
    "route",
    "method",
    "response_code_class",
    "response_code",
    "tenant",
    "label",
    "decision",
    "reason",
    "provider",
    "result",
    "rule",
    "lane",
    "key",
    "state",
    "policy",
    "breaker_key",
];

pub struct MeshConfig<'a> {
    pub topology: &'a Topology,
    pub traffic: &'a TrafficConfig,
    pub plugins: &'a [Plugin],
    /// Where the plugins' ECDS files are (see `plugins::filter_stub`).
    pub ecds_dir: &'a std::path::Path,
}

/// One proxy and the local ports it was given.
pub struct ProxyPlan<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub service_account: &'a str,
    pub admin_port: u16,
    pub role: ProxyRole<'a>,
}

pub enum ProxyRole<'a> {
    Sidecar {
        workload: &'a Workload,
        inbound_port: u16,
        outbound_port: u16,
        app_port: u16,
        /// The one service port apps reach through the outbound listener.
        service_port: u16,
    },
    Gateway {
        listen_port: u16,
        bound_gateways: &'a [String],
    },
}

pub fn bootstrap(
    mesh: &MeshConfig<'_>,
    proxy: &ProxyPlan<'_>,
    address_of: &dyn Fn(&Workload) -> (String, u16),
) -> Result<Value> {
    let view = ProxyView {
        namespace: proxy.namespace,
        labels: proxy.labels,
    };
    let mut listeners = Vec::new();
    let mut clusters = mesh.traffic.outbound_clusters(mesh.topology, address_of)?;
    let node_type;
    match &proxy.role {
        ProxyRole::Sidecar {
            workload,
            inbound_port,
            outbound_port,
            app_port,
            service_port,
        } => {
            node_type = "sidecar";
            let target_port = workload.container_port;
            let inbound_cluster = format!("inbound|{target_port}||");
            let inbound_routes = json!({
                "name": inbound_cluster,
                "virtual_hosts": [{"name": "inbound|http|{target_port}", "domains": ["*"], "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": inbound_cluster, "timeout": "0s"}}]}],
                "validate_clusters": false,
            });
            let filters = http_filters(mesh, &view, ListenerClass::SidecarInbound, target_port);
            listeners.push(listener(
                "virtualInbound",
                *inbound_port,
                "INBOUND",
                &format!("inbound_0.0.0.0_{target_port}"),
                inbound_routes,
                filters,
                false,
            ));
            clusters.push(json!({
                "name": inbound_cluster,
                "type": "STATIC",
                "connect_timeout": "10s",
                "load_assignment": {"cluster_name": inbound_cluster, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": app_port}}}}]}]},
            }));
            let outbound_routes = json!({
                "name": service_port.to_string(),
                "virtual_hosts": mesh.traffic.virtual_hosts(mesh.topology, &RouteScope::Mesh { namespace: proxy.namespace })?,
                "validate_clusters": false,
            });
            let filters = http_filters(mesh, &view, ListenerClass::SidecarOutbound, *service_port);
            listeners.push(listener(
                &format!("0.0.0.0_{service_port}"),
                *outbound_port,
                "OUTBOUND",
                &format!("outbound_0.0.0.0_{service_port}"),
                outbound_routes,
                filters,
                false,
            ));
        }
        ProxyRole::Gateway {
            listen_port,
            bound_gateways,
        } => {
            node_type = "router";
            let routes = json!({
                "name": format!("http.{INGRESS_TARGET_PORT}"),
                "virtual_hosts": mesh.traffic.virtual_hosts(mesh.topology, &RouteScope::Gateway { bound: bound_gateways })?,
                "validate_clusters": false,
            });
            let filters = http_filters(mesh, &view, ListenerClass::Gateway, INGRESS_TARGET_PORT);
            listeners.push(listener(
                &format!("0.0.0.0_{INGRESS_TARGET_PORT}"),
                *listen_port,
                "OUTBOUND",
                &format!("outbound_0.0.0.0_{INGRESS_TARGET_PORT}"),
                routes,
                filters,
                true,
            ));
        }
    }
    let pod = proxy.name;
    let bootstrap = json!({
        "node": {
            "id": format!("{node_type}~127.0.0.1~{pod}.{}~{}.svc.cluster.local", proxy.namespace, proxy.namespace),
            "cluster": format!("{}.{}", proxy.labels.get("app").map_or(pod, String::as_str), proxy.namespace),
            "metadata": {
                "NAME": pod,
                "NAMESPACE": proxy.namespace,
                "WORKLOAD_NAME": pod,
                "LABELS": proxy.labels,
                "SERVICE_ACCOUNT": proxy.service_account,
                "CLUSTER_ID": "Kubernetes",
                "MESH_ID": "cluster.local",
            },
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": proxy.admin_port}}},
        "stats_config": {
            "use_all_default_tags": true,
            "stats_tags": STAT_TAGS.iter().map(|tag| json!({"tag_name": tag, "regex": meshwasm_shared::metrics::tag_regex(tag)})).collect::<Vec<_>>(),
        },
        "static_resources": {"listeners": listeners, "clusters": clusters},
    });
    Ok(bootstrap)
}

/// The HTTP filter chain in Istio's order: AUTHN, AUTHZ, STATS, UNSPECIFIED
/// plugins (jwt_authn and rbac would sit between them), then fault, cors and
/// the router. Istio's own filters (metadata exchange, istio.stats) are not
/// in stock Envoy and are left out; the relative order is kept.
fn http_filters(
    mesh: &MeshConfig<'_>,
    view: &ProxyView<'_>,
    class: ListenerClass,
    port: u16,
) -> Vec<Value> {
    let mut filters: Vec<Value> = plugins::select(mesh.plugins, view, class, port)
        .into_iter()
        .map(|plugin| plugins::filter_stub(plugin, &mesh.ecds_dir.join(plugin.ecds_file_name())))
        .collect();
    filters.push(json!({"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}));
    filters.push(json!({"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}));
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    filters
}

fn listener(
    name: &str,
    port: u16,
    direction: &str,
    stat_prefix: &str,
    route_config: Value,
    http_filters: Vec<Value>,
    edge: bool,
) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "traffic_direction": direction,
        // One process per port, so a port already taken fails loudly.
        "enable_reuse_port": false,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat_prefix,
                "route_config": route_config,
                "http_filters": http_filters,
                // Gateways are the edge; sidecars trust the x-forwarded-for they get.
                "use_remote_address": edge,
                // Istio's default pathNormalization (DEFAULT = BASE): RFC 3986
                // normalisation only; `//` stays, `%2F` stays as sent
                // (pilot/pkg/networking/core/listener_builder.go).
                "normalize_path": true,
                "merge_slashes": false,
                "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
                "access_log": [{"name": "envoy.access_loggers.stdout", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}],
            },
        }]}],
    })
}
