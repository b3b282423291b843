//! VirtualService and DestinationRule → Envoy routes and clusters, the way
//! istiod builds them for sidecars (pilot/pkg/networking/core/route,
//! .../cluster_traffic_policy.go), so routing decisions our filters make
//! through headers take effect as in a cluster.

use crate::istio::{
    DestinationRuleSpec, HeaderOperations, HttpMatch, HttpRoute, StringMatch, TrafficPolicy,
    VirtualServiceSpec,
};
use crate::resources::Resource;
use crate::security::{SecurityConfig, UpstreamTarget};
use crate::topology::{qualify, Service, Topology, Workload};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

pub struct TrafficConfig {
    virtual_services: Vec<(String, VirtualServiceSpec)>,
    destination_rules: Vec<(String, DestinationRuleSpec)>,
}

/// Who the routes are for: sidecars (VirtualServices bound to `mesh`) or the
/// ingress gateway (VirtualServices bound to one of its Gateways).
pub enum RouteScope<'a> {
    Mesh { namespace: &'a str },
    Gateway { bound: &'a [String] },
}

impl TrafficConfig {
    pub fn from_resources(resources: &[Resource]) -> Result<Self> {
        let mut virtual_services = Vec::new();
        let mut destination_rules = Vec::new();
        for resource in resources
            .iter()
            .filter(|r| r.group() == "networking.istio.io")
        {
            match resource.kind.as_str() {
                "VirtualService" => {
                    virtual_services.push((resource.namespace.clone(), resource.spec()?))
                }
                "DestinationRule" => {
                    destination_rules.push((resource.namespace.clone(), resource.spec()?))
                }
                _ => {}
            }
        }
        Ok(Self {
            virtual_services,
            destination_rules,
        })
    }

    fn destination_rule(&self, fqdn: &str) -> Option<&DestinationRuleSpec> {
        self.destination_rules
            .iter()
            .find(|(namespace, rule)| qualify(&rule.host, namespace) == fqdn)
            .map(|(_, rule)| rule)
    }

    /// The virtual hosts of one route configuration.
    pub fn virtual_hosts(&self, topology: &Topology, scope: &RouteScope<'_>) -> Result<Vec<Value>> {
        match scope {
            RouteScope::Mesh { namespace } => self.mesh_virtual_hosts(topology, namespace),
            RouteScope::Gateway { bound } => self.gateway_virtual_hosts(topology, bound),
        }
    }

    fn mesh_virtual_hosts(&self, topology: &Topology, proxy_namespace: &str) -> Result<Vec<Value>> {
        let mut hosts = Vec::new();
        for service in &topology.services {
            for (port, _) in &service.ports {
                let fqdn = service.fqdn();
                let vs = self.virtual_services.iter().find(|(namespace, vs)| {
                    (vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh"))
                        && vs.hosts.iter().any(|host| qualify(host, namespace) == fqdn)
                });
                let routes = match vs {
                    Some((namespace, vs)) => {
                        self.translate_routes(topology, namespace, vs, "mesh", Some(*port))?
                    }
                    None => vec![default_route(&cluster_name(*port, None, &fqdn))],
                };
                hosts.push(json!({
                    "name": format!("{fqdn}:{port}"),
                    "domains": domains(service, *port, proxy_namespace),
                    "routes": routes,
                }));
            }
        }
        for external in &topology.external {
            for (port, _) in &external.ports {
                hosts.push(json!({
                    "name": format!("{}:{port}", external.host),
                    "domains": [external.host.clone(), format!("{}:{port}", external.host)],
                    "routes": [default_route(&cluster_name(*port as u16, None, &external.host))],
                }));
            }
        }
        Ok(hosts)
    }

    fn gateway_virtual_hosts(&self, topology: &Topology, bound: &[String]) -> Result<Vec<Value>> {
        let mut hosts = Vec::new();
        for (namespace, vs) in &self.virtual_services {
            let Some(gateway) = vs.gateways.iter().find_map(|g| {
                let qualified = if g.contains('/') {
                    g.clone()
                } else {
                    format!("{namespace}/{g}")
                };
                bound.contains(&qualified).then_some(g.as_str())
            }) else {
                continue;
            };
            let routes = self.translate_routes(topology, namespace, vs, gateway, None)?;
            let domains: Vec<String> = vs
                .hosts
                .iter()
                .flat_map(|h| {
                    if h == "*" {
                        vec![h.clone()]
                    } else {
                        vec![h.clone(), format!("{h}:*")]
                    }
                })
                .collect();
            hosts.push(json!({"name": format!("{namespace}/{}", domains.join(",")), "domains": domains, "routes": routes}));
        }
        if hosts.is_empty() {
            bail!("no VirtualService is bound to the ingress gateway's Gateways {bound:?}");
        }
        Ok(hosts)
    }

    fn translate_routes(
        &self,
        topology: &Topology,
        namespace: &str,
        vs: &VirtualServiceSpec,
        gateway: &str,
        port: Option<u16>,
    ) -> Result<Vec<Value>> {
        let mut routes = Vec::new();
        for http in &vs.http {
            let matches: Vec<&HttpMatch> = http
                .matches
                .iter()
                .filter(|m| m.gateways.is_empty() || m.gateways.iter().any(|g| g == gateway))
                .filter(|m| m.port.is_none() || m.port == port.map(u32::from))
                .collect();
            if !http.matches.is_empty() && matches.is_empty() {
                continue;
            }
            let action = self.route_action(topology, namespace, http)?;
            let route_matches = if matches.is_empty() {
                vec![json!({"prefix": "/"})]
            } else {
                matches.iter().map(|m| route_match(m)).collect()
            };
            for route_match in route_matches {
                let mut route = action.clone();
                route.insert("match".into(), route_match);
                if let Some(name) = &http.name {
                    route.insert("name".into(), json!(name));
                }
                routes.push(Value::Object(route));
            }
        }
        Ok(routes)
    }

    fn route_action(
        &self,
        topology: &Topology,
        namespace: &str,
        http: &HttpRoute,
    ) -> Result<Map<String, Value>> {
        let mut route = Map::new();
        if let Some(redirect) = &http.redirect {
            let mut action = Map::new();
            if let Some(uri) = &redirect.uri {
                action.insert("path_redirect".into(), json!(uri));
            }
            if let Some(authority) = &redirect.authority {
                action.insert("host_redirect".into(), json!(authority));
            }
            let code = match redirect.redirect_code.unwrap_or(301) {
                301 => "MOVED_PERMANENTLY",
                302 => "FOUND",
                303 => "SEE_OTHER",
                307 => "TEMPORARY_REDIRECT",
                308 => "PERMANENT_REDIRECT",
                other => bail!("unsupported redirectCode {other}"),
            };
            action.insert("response_code".into(), json!(code));
            route.insert("redirect".into(), Value::Object(action));
        } else if let Some(direct) = &http.direct_response {
            let mut action = json!({"status": direct.status});
            if let Some(body) = direct.body.as_ref().and_then(|b| b.string.clone()) {
                action["body"] = json!({"inline_string": body});
            }
            route.insert("direct_response".into(), action);
        } else {
            route.insert(
                "route".into(),
                self.forward_action(topology, namespace, http)?,
            );
        }
        if let Some(request) = http.headers.as_ref().and_then(|h| h.request.as_ref()) {
            add_header_operations(&mut route, request, "request");
        }
        if let Some(response) = http.headers.as_ref().and_then(|h| h.response.as_ref()) {
            add_header_operations(&mut route, response, "response");
        }
        Ok(route)
    }

    fn forward_action(
        &self,
        topology: &Topology,
        namespace: &str,
        http: &HttpRoute,
    ) -> Result<Value> {
        if http.route.is_empty() {
            bail!("an http route needs `route`, `redirect` or `directResponse`");
        }
        let mut clusters = Vec::new();
        for destination in &http.route {
            let target = &destination.destination;
            let fqdn = qualify(&target.host, namespace);
            let port = match target.port.as_ref().map(|p| p.number) {
                Some(number) => u16::try_from(number).context("destination port out of range")?,
                None => {
                    let service = topology
                        .resolve_host(&target.host, namespace)
                        .with_context(|| {
                            format!(
                                "destination host {} is not a Service of the mesh",
                                target.host
                            )
                        })?;
                    match service.ports.as_slice() {
                        [(port, _)] => *port,
                        _ => bail!(
                            "destination {} has several ports: set destination.port",
                            target.host
                        ),
                    }
                }
            };
            if let Some(subset) = &target.subset {
                let known = self
                    .destination_rule(&fqdn)
                    .is_some_and(|rule| rule.subsets.iter().any(|s| &s.name == subset));
                if !known {
                    bail!("subset {subset} of {fqdn} is not defined by a DestinationRule");
                }
            }
            clusters.push((
                cluster_name(port, target.subset.as_deref(), &fqdn),
                destination.weight.unwrap_or(0),
            ));
        }
        let mut action = if let [(cluster, _)] = clusters.as_slice() {
            json!({"cluster": cluster})
        } else {
            json!({"weighted_clusters": {"clusters": clusters.iter().map(|(name, weight)| json!({"name": name, "weight": weight})).collect::<Vec<_>>()}})
        };
        // Istio disables Envoy's 15s default route timeout unless a timeout is set.
        action["timeout"] = json!(match &http.timeout {
            Some(timeout) => envoy_duration(timeout)?,
            None => "0s".to_owned(),
        });
        match &http.retries {
            Some(retries) if retries.attempts == 0 => {}
            Some(retries) => {
                let mut policy = default_retry_policy();
                policy["num_retries"] = json!(retries.attempts);
                if let Some(retry_on) = &retries.retry_on {
                    let (codes, conditions): (Vec<&str>, Vec<&str>) = retry_on
                        .split(',')
                        .map(str::trim)
                        .partition(|c| c.parse::<u16>().is_ok());
                    let mut conditions = conditions.join(",");
                    if !codes.is_empty() {
                        conditions.push_str(",retriable-status-codes");
                    }
                    policy["retry_on"] = json!(conditions.trim_start_matches(','));
                    policy["retriable_status_codes"] = json!(codes
                        .iter()
                        .filter_map(|c| c.parse::<u16>().ok())
                        .collect::<Vec<_>>());
                }
                if let Some(per_try) = &retries.per_try_timeout {
                    policy["per_try_timeout"] = json!(envoy_duration(per_try)?);
                }
                action["retry_policy"] = policy;
            }
            None => action["retry_policy"] = default_retry_policy(),
        }
        if let Some(rewrite) = &http.rewrite {
            if let Some(uri) = &rewrite.uri {
                action["prefix_rewrite"] = json!(uri);
            }
            if let Some(authority) = &rewrite.authority {
                action["host_rewrite_literal"] = json!(authority);
            }
        }
        Ok(action)
    }

    /// Clusters for every Service port and DestinationRule subset, plus the
    /// ServiceEntries'. `address_of` gives a workload's inbound (sidecar)
    /// address; `security` adds upstream TLS (auto mTLS or the rule's `tls`).
    pub fn outbound_clusters(
        &self,
        topology: &Topology,
        address_of: &dyn Fn(&Workload) -> (String, u16),
        security: &SecurityConfig,
    ) -> Result<Vec<Value>> {
        let mut clusters = Vec::new();
        for service in &topology.services {
            let fqdn = service.fqdn();
            let rule = self.destination_rule(&fqdn);
            let endpoints = topology.endpoints(service);
            for (port, _) in &service.ports {
                let policy = rule.and_then(|r| r.traffic_policy.as_ref());
                let tls = policy.and_then(|p| p.tls.as_ref());
                let mut subsets = vec![(None, endpoints.clone(), policy, tls)];
                for subset in rule.iter().flat_map(|r| &r.subsets) {
                    let members: Vec<&Workload> = endpoints
                        .iter()
                        .copied()
                        .filter(|w| crate::resources::labels_match(&subset.labels, &w.labels))
                        .collect();
                    let own = subset.traffic_policy.as_ref();
                    subsets.push((
                        Some(subset.name.as_str()),
                        members,
                        own.or(policy),
                        // A subset's policy overrides field by field: its tls, else the rule's.
                        own.and_then(|p| p.tls.as_ref()).or(tls),
                    ));
                }
                for (subset, members, policy, tls) in subsets {
                    let addresses: Vec<(String, u16)> =
                        members.iter().map(|w| address_of(w)).collect();
                    let mut built =
                        cluster(&cluster_name(*port, subset, &fqdn), &addresses, policy)?;
                    security.apply_upstream_tls(
                        &mut built,
                        &UpstreamTarget {
                            service,
                            port: *port,
                            subset,
                            endpoints: &members,
                            all_endpoints: &endpoints,
                            tls,
                        },
                    )?;
                    clusters.push(built);
                }
            }
        }
        for external in &topology.external {
            for (port, endpoints) in &external.ports {
                let addresses: Vec<(String, u16)> = endpoints
                    .iter()
                    .map(|(address, p)| (address.clone(), *p as u16))
                    .collect();
                clusters.push(cluster(
                    &cluster_name(*port as u16, None, &external.host),
                    &addresses,
                    None,
                )?);
            }
        }
        Ok(clusters)
    }
}

/// Istio's cluster naming: `outbound|<port>|<subset>|<host>`.
pub fn cluster_name(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or(""))
}

/// The names a Service answers to from a pod in `namespace`, with and without port.
fn domains(service: &Service, port: u16, proxy_namespace: &str) -> Vec<String> {
    let mut names = vec![
        service.fqdn(),
        format!("{}.{}.svc", service.name, service.namespace),
        format!("{}.{}", service.name, service.namespace),
    ];
    if service.namespace == proxy_namespace {
        names.push(service.name.clone());
    }
    names
        .iter()
        .flat_map(|name| [name.clone(), format!("{name}:{port}")])
        .collect()
}

/// Istio's default for routes without a VirtualService retry setting.
fn default_retry_policy() -> Value {
    json!({
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retriable_status_codes": [503],
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 5,
    })
}

fn default_route(cluster: &str) -> Value {
    json!({
        "name": "default",
        "match": {"prefix": "/"},
        "route": {"cluster": cluster, "timeout": "0s", "retry_policy": default_retry_policy()},
    })
}

fn string_match(matcher: &StringMatch) -> Value {
    match matcher {
        StringMatch::Exact(value) => json!({"exact": value}),
        StringMatch::Prefix(value) => json!({"prefix": value}),
        StringMatch::Regex(value) => json!({"safe_regex": {"regex": value}}),
    }
}

fn route_match(matcher: &HttpMatch) -> Value {
    let mut route = match &matcher.uri {
        Some(StringMatch::Exact(path)) => json!({"path": path}),
        Some(StringMatch::Prefix(prefix)) => json!({"prefix": prefix}),
        Some(StringMatch::Regex(regex)) => json!({"safe_regex": {"regex": regex}}),
        None => json!({"prefix": "/"}),
    };
    if matcher.ignore_uri_case {
        route["case_sensitive"] = json!(false);
    }
    let mut headers: Vec<Value> = matcher
        .headers
        .iter()
        .map(|(name, m)| json!({"name": name, "string_match": string_match(m)}))
        .collect();
    headers.extend(matcher.without_headers.iter().map(
        |(name, m)| json!({"name": name, "string_match": string_match(m), "invert_match": true}),
    ));
    if let Some(method) = &matcher.method {
        headers.push(json!({"name": ":method", "string_match": string_match(method)}));
    }
    if let Some(authority) = &matcher.authority {
        headers.push(json!({"name": ":authority", "string_match": string_match(authority)}));
    }
    if !headers.is_empty() {
        route["headers"] = json!(headers);
    }
    if !matcher.query_params.is_empty() {
        route["query_parameters"] = json!(matcher
            .query_params
            .iter()
            .map(|(name, m)| json!({"name": name, "string_match": string_match(m)}))
            .collect::<Vec<_>>());
    }
    route
}

fn add_header_operations(
    route: &mut Map<String, Value>,
    operations: &HeaderOperations,
    direction: &str,
) {
    let set = operations.set.iter().map(|(k, v)| json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}));
    let add = operations.add.iter().map(|(k, v)| json!({"header": {"key": k, "value": v}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}));
    let to_add: Vec<Value> = set.chain(add).collect();
    if !to_add.is_empty() {
        route.insert(format!("{direction}_headers_to_add"), json!(to_add));
    }
    if !operations.remove.is_empty() {
        route.insert(
            format!("{direction}_headers_to_remove"),
            json!(operations.remove),
        );
    }
}

/// An Envoy cluster with Istio's defaults (10s connect timeout, LEAST_REQUEST,
/// effectively unlimited circuit breakers) and the DestinationRule's policy.
fn cluster(
    name: &str,
    endpoints: &[(String, u16)],
    policy: Option<&TrafficPolicy>,
) -> Result<Value> {
    let unlimited = u32::MAX;
    let mut thresholds = json!({"max_connections": unlimited, "max_pending_requests": unlimited, "max_requests": unlimited, "max_retries": unlimited, "track_remaining": true});
    let mut connect_timeout = "10s".to_owned();
    let mut lb_policy = "LEAST_REQUEST";
    let mut http_options = Map::new();
    let mut cluster = json!({"name": name});
    if let Some(policy) = policy {
        if let Some(simple) = policy
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.simple.as_deref())
        {
            lb_policy = match simple {
                "ROUND_ROBIN" => "ROUND_ROBIN",
                "RANDOM" => "RANDOM",
                "LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED" => "LEAST_REQUEST",
                other => {
                    bail!("cluster {name}: loadBalancer.simple {other} is not supported locally")
                }
            };
        }
        if let Some(pool) = &policy.connection_pool {
            if let Some(tcp) = &pool.tcp {
                if let Some(max) = tcp.max_connections {
                    thresholds["max_connections"] = json!(max);
                }
                if let Some(timeout) = &tcp.connect_timeout {
                    connect_timeout = envoy_duration(timeout)?;
                }
            }
            if let Some(http) = &pool.http {
                for (value, field) in [
                    (http.http1_max_pending_requests, "max_pending_requests"),
                    (http.http2_max_requests, "max_requests"),
                    (http.max_retries, "max_retries"),
                ] {
                    if let Some(value) = value.filter(|v| *v > 0) {
                        thresholds[field] = json!(value);
                    }
                }
                if let Some(max) = http.max_requests_per_connection.filter(|v| *v > 0) {
                    http_options.insert("max_requests_per_connection".into(), json!(max));
                }
                if let Some(idle) = &http.idle_timeout {
                    http_options.insert("idle_timeout".into(), json!(envoy_duration(idle)?));
                }
            }
        }
        if let Some(outlier) = &policy.outlier_detection {
            let mut detection = json!({
                "interval": envoy_duration(outlier.interval.as_deref().unwrap_or("10s"))?,
                "base_ejection_time": envoy_duration(outlier.base_ejection_time.as_deref().unwrap_or("30s"))?,
                "max_ejection_percent": outlier.max_ejection_percent.unwrap_or(10),
                // Istio enforces only the error kinds that are configured.
                "enforcing_consecutive_5xx": 0,
                "enforcing_consecutive_gateway_failure": 0,
                "enforcing_success_rate": 0,
            });
            if let Some(errors) = outlier.consecutive_5xx_errors.filter(|e| *e > 0) {
                detection["consecutive_5xx"] = json!(errors);
                detection["enforcing_consecutive_5xx"] = json!(100);
            }
            if let Some(errors) = outlier.consecutive_gateway_errors.filter(|e| *e > 0) {
                detection["consecutive_gateway_failure"] = json!(errors);
                detection["enforcing_consecutive_gateway_failure"] = json!(100);
            }
            cluster["outlier_detection"] = detection;
            // Istio maps minHealthPercent (default 0) to the panic threshold.
            cluster["common_lb_config"] = json!({"healthy_panic_threshold": {"value": outlier.min_health_percent.unwrap_or(0)}});
        }
    }
    cluster["type"] = json!(if endpoints
        .iter()
        .all(|(address, _)| address.parse::<std::net::IpAddr>().is_ok())
    {
        "STATIC"
    } else {
        "STRICT_DNS"
    });
    cluster["connect_timeout"] = json!(connect_timeout);
    cluster["lb_policy"] = json!(lb_policy);
    cluster["circuit_breakers"] = json!({"thresholds": [thresholds]});
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": http_options,
            "explicit_http_config": {"http_protocol_options": {}},
        }
    });
    cluster["load_assignment"] = json!({
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": endpoints.iter().map(|(address, port)| json!({"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}})).collect::<Vec<_>>()}],
    });
    Ok(cluster)
}

/// A Go/protobuf duration (`1m30s`, `250ms`, `1.5s`) as Envoy's JSON form (`90s`).
pub fn envoy_duration(text: &str) -> Result<String> {
    let mut rest = text.trim();
    let mut seconds = 0.0;
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .with_context(|| format!("duration {text} needs a unit"))?;
        let (number, tail) = rest.split_at(number_end);
        let value: f64 = number
            .parse()
            .with_context(|| format!("bad duration {text}"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            other => bail!("duration {text} has unknown unit {other}"),
        };
        seconds += value * scale;
        rest = tail;
    }
    Ok(format!("{}s", (seconds * 1e9).round() / 1e9))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_documents;

    const MESH: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: inventory-v1, namespace: shop}
spec:
  template:
    metadata: {labels: {app: inventory, version: v1}}
    spec: {containers: [{name: c, image: inventory, ports: [{containerPort: 8080}]}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: inventory-v2, namespace: shop}
spec:
  template:
    metadata: {labels: {app: inventory, version: v2}}
    spec: {containers: [{name: c, image: inventory, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec: {selector: {app: inventory}, ports: [{name: http, port: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory, namespace: shop}
spec:
  host: inventory
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 10}, http: {http1MaxPendingRequests: 5, maxRequestsPerConnection: 3}}
    outlierDetection: {consecutive5xxErrors: 4, interval: 5s, baseEjectionTime: 1m, maxEjectionPercent: 50}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inventory, namespace: shop}
spec:
  hosts: [inventory]
  http:
  - name: lane-v2
    match: [{headers: {x-lane: {exact: v2}}}]
    route: [{destination: {host: inventory, subset: v2}}]
  - name: split
    timeout: 1.5s
    retries: {attempts: 0}
    rewrite: {uri: /v1/}
    route:
    - {destination: {host: inventory, subset: v1}, weight: 90}
    - {destination: {host: inventory, subset: v2}, weight: 10}
"#;

    fn setup() -> (Topology, TrafficConfig) {
        let resources = parse_documents("mesh.yaml", MESH, 0).unwrap();
        (
            Topology::from_resources(&resources).unwrap(),
            TrafficConfig::from_resources(&resources).unwrap(),
        )
    }

    #[test]
    fn virtual_service_becomes_header_and_weighted_routes() {
        let (topology, traffic) = setup();
        let hosts = traffic
            .virtual_hosts(&topology, &RouteScope::Mesh { namespace: "shop" })
            .unwrap();
        let host = &hosts[0];
        assert!(host["domains"]
            .as_array()
            .unwrap()
            .contains(&json!("inventory:8080")));
        let routes = host["routes"].as_array().unwrap();
        assert_eq!(
            routes[0]["match"]["headers"][0],
            json!({"name": "x-lane", "string_match": {"exact": "v2"}})
        );
        assert_eq!(
            routes[0]["route"]["cluster"],
            "outbound|8080|v2|inventory.shop.svc.cluster.local"
        );
        assert_eq!(routes[0]["route"]["retry_policy"]["num_retries"], 2);
        let split = &routes[1]["route"];
        assert_eq!(
            split["weighted_clusters"]["clusters"][0],
            json!({"name": "outbound|8080|v1|inventory.shop.svc.cluster.local", "weight": 90})
        );
        assert_eq!(split["timeout"], "1.5s");
        assert!(split.get("retry_policy").is_none());
        assert_eq!(split["prefix_rewrite"], "/v1/");
    }

    #[test]
    fn short_names_only_from_the_same_namespace() {
        let (topology, traffic) = setup();
        let hosts = traffic
            .virtual_hosts(&topology, &RouteScope::Mesh { namespace: "other" })
            .unwrap();
        let domains = hosts[0]["domains"].as_array().unwrap();
        assert!(!domains.contains(&json!("inventory")));
        assert!(domains.contains(&json!("inventory.shop")));
    }

    #[test]
    fn destination_rule_becomes_cluster_settings_per_subset() {
        let (topology, traffic) = setup();
        let clusters = traffic
            .outbound_clusters(
                &topology,
                &|w| {
                    (
                        "127.0.0.1".to_owned(),
                        if w.name.ends_with("v1") { 1001 } else { 1002 },
                    )
                },
                &SecurityConfig::default(),
            )
            .unwrap();
        let names: Vec<&str> = clusters
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            vec![
                "outbound|8080||inventory.shop.svc.cluster.local",
                "outbound|8080|v1|inventory.shop.svc.cluster.local",
                "outbound|8080|v2|inventory.shop.svc.cluster.local"
            ]
        );
        let all = &clusters[0];
        assert_eq!(
            all["load_assignment"]["endpoints"][0]["lb_endpoints"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            all["circuit_breakers"]["thresholds"][0]["max_connections"],
            10
        );
        assert_eq!(
            all["circuit_breakers"]["thresholds"][0]["max_pending_requests"],
            5
        );
        assert_eq!(
            all["circuit_breakers"]["thresholds"][0]["max_requests"],
            u32::MAX
        );
        assert_eq!(all["outlier_detection"]["consecutive_5xx"], 4);
        assert_eq!(all["outlier_detection"]["enforcing_consecutive_5xx"], 100);
        assert_eq!(all["outlier_detection"]["base_ejection_time"], "60s");
        assert_eq!(all["lb_policy"], "LEAST_REQUEST");
        let options = &all["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(
            options["common_http_protocol_options"]["max_requests_per_connection"],
            3
        );
        let v2 = &clusters[2];
        assert_eq!(v2["lb_policy"], "ROUND_ROBIN");
        assert!(
            v2.get("outlier_detection").is_none(),
            "a subset policy replaces the top-level one"
        );
        assert_eq!(
            v2["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            1002
        );
    }

    #[test]
    fn unknown_subset_is_refused() {
        let text = MESH.replace(
            "subset: v2}}]\n  - name: split",
            "subset: v3}}]\n  - name: split",
        );
        let resources = parse_documents("mesh.yaml", &text, 0).unwrap();
        let topology = Topology::from_resources(&resources).unwrap();
        let err = TrafficConfig::from_resources(&resources)
            .unwrap()
            .virtual_hosts(&topology, &RouteScope::Mesh { namespace: "shop" })
            .unwrap_err();
        assert!(err.to_string().contains("subset v3"), "{err}");
    }

    #[test]
    fn durations_convert_to_envoy_json() {
        assert_eq!(envoy_duration("3s").unwrap(), "3s");
        assert_eq!(envoy_duration("250ms").unwrap(), "0.25s");
        assert_eq!(envoy_duration("1m30s").unwrap(), "90s");
        assert_eq!(envoy_duration("1h").unwrap(), "3600s");
        assert!(envoy_duration("3").is_err());
        assert!(envoy_duration("3d").is_err());
    }
}
