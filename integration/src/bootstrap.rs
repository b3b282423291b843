//! The Envoy bootstrap of one proxy: what a sidecar or the ingress gateway
//! holds once istiod's LDS/CDS and istio-agent's ECDS rewrite have arrived,
//! written as static config.

use crate::ca::Identity;
use crate::plugins::{self, ListenerClass, Phase, Plugin, ProxyView};
use crate::security::{self, SecurityConfig};
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
    pub security: &'a SecurityConfig,
    /// Where the plugins' ECDS files are (see `plugins::filter_stub`).
    pub ecds_dir: &'a std::path::Path,
}

/// One proxy and the local ports it was given.
pub struct ProxyPlan<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub service_account: &'a str,
    /// The proxy's workload certificate from the mesh CA (see `ca.rs`).
    pub identity: &'a Identity,
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
    let mut clusters = mesh
        .traffic
        .outbound_clusters(mesh.topology, address_of, mesh.security)?;
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
            // iptables sends the pod's port to the inbound listener; locally
            // it binds its own port, which is what RBAC sees as destination port.
            let local_port = |port: u32| {
                if port == u32::from(target_port) {
                    u32::from(*inbound_port)
                } else {
                    port
                }
            };
            let filters = http_filters(
                mesh,
                &view,
                ListenerClass::SidecarInbound,
                target_port,
                &local_port,
            )?;
            let mode = mesh.security.inbound_mode(&view, target_port);
            listeners.push(listener(
                "virtualInbound",
                *inbound_port,
                "INBOUND",
                &format!("inbound_0.0.0.0_{target_port}"),
                inbound_routes,
                filters,
                ListenerKind::Inbound(security::inbound_chains(mode)),
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
            let filters = http_filters(
                mesh,
                &view,
                ListenerClass::SidecarOutbound,
                *service_port,
                &|port| port,
            )?;
            listeners.push(listener(
                &format!("0.0.0.0_{service_port}"),
                *outbound_port,
                "OUTBOUND",
                &format!("outbound_0.0.0.0_{service_port}"),
                outbound_routes,
                filters,
                ListenerKind::Outbound,
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
            let local_port = |port: u32| {
                if port == u32::from(INGRESS_TARGET_PORT) {
                    u32::from(*listen_port)
                } else {
                    port
                }
            };
            let filters = http_filters(
                mesh,
                &view,
                ListenerClass::Gateway,
                INGRESS_TARGET_PORT,
                &local_port,
            )?;
            listeners.push(listener(
                &format!("0.0.0.0_{INGRESS_TARGET_PORT}"),
                *listen_port,
                "OUTBOUND",
                &format!("outbound_0.0.0.0_{INGRESS_TARGET_PORT}"),
                routes,
                filters,
                ListenerKind::Gateway,
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
        "static_resources": {"listeners": listeners, "clusters": clusters, "secrets": proxy.identity.secrets()},
    });
    Ok(bootstrap)
}

/// The HTTP filter chain in Istio's order (listener_builder.go): AUTHN
/// plugins, `jwt_authn`, AUTHZ plugins, the `rbac` filters, STATS and
/// UNSPECIFIED plugins, then fault, cors and the router. Istio's own filters
/// (metadata exchange, istio.stats) are not in stock Envoy and are left out;
/// the relative order is kept.
fn http_filters(
    mesh: &MeshConfig<'_>,
    view: &ProxyView<'_>,
    class: ListenerClass,
    port: u16,
    local_port: &dyn Fn(u32) -> u32,
) -> Result<Vec<Value>> {
    let selected = plugins::select(mesh.plugins, view, class, port);
    let stub = |plugin: &&Plugin| {
        plugins::filter_stub(plugin, &mesh.ecds_dir.join(plugin.ecds_file_name()))
    };
    let phase = |wanted: Phase| {
        selected
            .iter()
            .filter(move |plugin| plugin.phase == wanted)
            .map(stub)
    };
    let mut filters: Vec<Value> = phase(Phase::Authn).collect();
    filters.extend(mesh.security.jwt_filter(view, class, mesh.topology)?);
    filters.extend(phase(Phase::Authz));
    filters.extend(mesh.security.rbac_filters(view, class, local_port));
    filters.extend(phase(Phase::Stats));
    filters.extend(phase(Phase::Unspecified));
    filters.push(json!({"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}));
    filters.push(json!({"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}));
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    Ok(filters)
}

/// Which listener: the gateway (the edge), a sidecar's outbound listener, or
/// its inbound listener with one filter chain per accepted transport.
enum ListenerKind {
    Gateway,
    Outbound,
    /// (filter_chain_match, transport_socket) per chain (`security::inbound_chains`).
    Inbound(Vec<(Value, Option<Value>)>),
}

fn listener(
    name: &str,
    port: u16,
    direction: &str,
    stat_prefix: &str,
    route_config: Value,
    http_filters: Vec<Value>,
    kind: ListenerKind,
) -> Value {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "route_config": route_config,
        "http_filters": http_filters,
        // Gateways are the edge; sidecars trust the x-forwarded-for they get.
        "use_remote_address": matches!(kind, ListenerKind::Gateway),
        // Istio's default pathNormalization (DEFAULT = BASE): RFC 3986
        // normalisation only; `//` stays, `%2F` stays as sent
        // (pilot/pkg/networking/core/listener_builder.go).
        "normalize_path": true,
        "merge_slashes": false,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "access_log": [{"name": "envoy.access_loggers.stdout", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}],
    });
    let inbound = matches!(kind, ListenerKind::Inbound(_));
    let chains = match kind {
        ListenerKind::Inbound(chains) => {
            // listener_inbound.go: the app learns its caller's identity from
            // x-forwarded-client-cert (proxy headers default APPEND_FORWARD).
            hcm["forward_client_cert_details"] = json!("APPEND_FORWARD");
            hcm["set_current_client_cert_details"] =
                json!({"subject": true, "dns": true, "uri": true});
            chains
        }
        ListenerKind::Gateway | ListenerKind::Outbound => vec![(Value::Null, None)],
    };
    let filter_chains: Vec<Value> = chains
        .into_iter()
        .map(|(chain_match, socket)| {
            let mut chain = json!({"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm.clone(),
            }]});
            if !chain_match.is_null() {
                chain["filter_chain_match"] = chain_match;
            }
            if let Some(socket) = socket {
                chain["transport_socket"] = socket;
            }
            chain
        })
        .collect();
    let mut listener = json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "traffic_direction": direction,
        // One process per port, so a port already taken fails loudly.
        "enable_reuse_port": false,
        "filter_chains": filter_chains,
    });
    if inbound {
        // The inbound listener tells mTLS from plaintext by the first bytes.
        listener["listener_filters"] = json!([{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]);
    }
    listener
}
