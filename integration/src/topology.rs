//! The mesh as Kubernetes would run it: workloads (one pod per Deployment),
//! Services selecting them, ServiceEntries, and the ingress gateway that
//! `istioctl install --set profile=demo` creates in `istio-system`.

use crate::istio::{DeploymentSpec, GatewaySpec, ServiceEntrySpec, ServiceSpec};
use crate::resources::{labels_match, Resource, ROOT_NAMESPACE};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// The gateway workload's name, labels and service ports are those of the
/// demo profile's `istio-ingressgateway` (Service port 80 → target port 8080).
pub const INGRESS_NAME: &str = "istio-ingressgateway";
pub const INGRESS_TARGET_PORT: u16 = 8080;
const INGRESS_SERVICE_PORT: u32 = 80;

#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// The container image (`ghcr.io/meshwasm/order:0.1.0`).
    pub image: String,
    /// The app binary: the last path segment of the container image.
    pub binary: String,
    pub container_port: u16,
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub selector: BTreeMap<String, String>,
    /// (service port, target port)
    pub ports: Vec<(u16, u16)>,
}

impl Service {
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

#[derive(Debug, Clone)]
pub struct ExternalService {
    pub host: String,
    /// (port, endpoints as `address:port`)
    pub ports: Vec<(u32, Vec<(String, u32)>)>,
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub external: Vec<ExternalService>,
    pub gateway: Option<IngressGateway>,
}

#[derive(Debug, Clone)]
pub struct IngressGateway {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The Istio `Gateway` objects that select this workload, as `ns/name`.
    pub bound_gateways: Vec<String>,
}

pub fn ingress_labels() -> BTreeMap<String, String> {
    [("app", INGRESS_NAME), ("istio", "ingressgateway")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl Topology {
    pub fn from_resources(resources: &[Resource]) -> Result<Self> {
        let mut workloads = Vec::new();
        let mut services = Vec::new();
        let mut external = Vec::new();
        let mut bound_gateways = Vec::new();
        for resource in resources {
            match (resource.group(), resource.kind.as_str()) {
                ("apps", "Deployment") => workloads.push(workload(resource)?),
                ("", "Service") => services.push(service(resource)?),
                ("networking.istio.io", "ServiceEntry") => {
                    external.extend(service_entry(resource)?)
                }
                ("networking.istio.io", "Gateway") => {
                    let spec: GatewaySpec = resource.spec()?;
                    if labels_match(&spec.selector, &ingress_labels()) {
                        let http_ports: Vec<u32> = spec
                            .servers
                            .iter()
                            .filter(|server| server.port.protocol.eq_ignore_ascii_case("HTTP"))
                            .map(|server| server.port.number)
                            .collect();
                        if !http_ports.contains(&INGRESS_SERVICE_PORT) {
                            bail!(
                                "{}: the local ingress serves the gateway's HTTP port {INGRESS_SERVICE_PORT}; Gateway {} has HTTP ports {http_ports:?}",
                                resource.source,
                                resource.name
                            );
                        }
                        bound_gateways.push(format!("{}/{}", resource.namespace, resource.name));
                    }
                }
                _ => {}
            }
        }
        let gateway = (!bound_gateways.is_empty()).then(|| IngressGateway {
            name: INGRESS_NAME.to_owned(),
            namespace: ROOT_NAMESPACE.to_owned(),
            labels: ingress_labels(),
            bound_gateways,
        });
        let topology = Self {
            workloads,
            services,
            external,
            gateway,
        };
        topology.check()?;
        Ok(topology)
    }

    fn check(&self) -> Result<()> {
        let mut names: Vec<&str> = self.workloads.iter().map(|w| w.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            bail!("two Deployments are named {}: workload names must be unique across namespaces locally", pair[0]);
        }
        for service in &self.services {
            if self.endpoints(service).is_empty() {
                bail!(
                    "Service {}/{} selects no Deployment's pods",
                    service.namespace,
                    service.name
                );
            }
        }
        Ok(())
    }

    /// Workloads behind a Service, optionally narrowed by subset labels.
    pub fn endpoints(&self, service: &Service) -> Vec<&Workload> {
        self.workloads
            .iter()
            .filter(|w| {
                w.namespace == service.namespace
                    && !service.selector.is_empty()
                    && labels_match(&service.selector, &w.labels)
            })
            .collect()
    }

    /// The Service a host name refers to, as Istio resolves short names
    /// (`inventory`, `inventory.order-app`, FQDN) from `namespace`.
    pub fn resolve_host(&self, host: &str, namespace: &str) -> Option<&Service> {
        let fqdn = qualify(host, namespace);
        self.services.iter().find(|service| service.fqdn() == fqdn)
    }

    /// The Services a workload serves.
    pub fn services_of(&self, workload: &Workload) -> Vec<&Service> {
        self.services
            .iter()
            .filter(|service| {
                service.namespace == workload.namespace
                    && labels_match(&service.selector, &workload.labels)
                    && !service.selector.is_empty()
            })
            .collect()
    }
}

/// Expands a short Kubernetes service name relative to `namespace`.
pub fn qualify(host: &str, namespace: &str) -> String {
    match host.split('.').count() {
        1 => format!("{host}.{namespace}.svc.cluster.local"),
        2 => format!("{host}.svc.cluster.local"),
        3 if host.ends_with(".svc") => format!("{host}.cluster.local"),
        _ => host.to_owned(),
    }
}

fn workload(resource: &Resource) -> Result<Workload> {
    let spec: DeploymentSpec = resource.spec()?;
    let pod = &spec.template;
    let container = pod.spec.containers.first().with_context(|| {
        format!(
            "{}: Deployment {} has no container",
            resource.source, resource.name
        )
    })?;
    let container_port = container
        .ports
        .first()
        .map(|port| port.container_port)
        .with_context(|| {
            format!(
                "{}: Deployment {} declares no containerPort",
                resource.source, resource.name
            )
        })?;
    let image_path = container
        .image
        .split(['@'])
        .next()
        .unwrap_or(&container.image);
    let image_path = match image_path.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') => path,
        _ => image_path,
    };
    let binary = image_path
        .rsplit('/')
        .next()
        .unwrap_or(image_path)
        .to_owned();
    let env = container
        .env
        .iter()
        .filter_map(|var| var.value.clone().map(|value| (var.name.clone(), value)))
        .collect();
    Ok(Workload {
        name: resource.name.clone(),
        namespace: resource.namespace.clone(),
        labels: pod.metadata.labels.clone(),
        service_account: pod
            .spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        image: container.image.clone(),
        binary,
        container_port,
        env,
    })
}

fn service(resource: &Resource) -> Result<Service> {
    let spec: ServiceSpec = resource.spec()?;
    let ports = spec
        .ports
        .iter()
        .map(|port| {
            port.numeric_target()
                .map(|target| (port.port, target))
                .with_context(|| {
                    format!(
                        "{}: Service {} uses a named targetPort; use a number",
                        resource.source, resource.name
                    )
                })
        })
        .collect::<Result<_>>()?;
    Ok(Service {
        name: resource.name.clone(),
        namespace: resource.namespace.clone(),
        selector: spec.selector,
        ports,
    })
}

fn service_entry(resource: &Resource) -> Result<Vec<ExternalService>> {
    let spec: ServiceEntrySpec = resource.spec()?;
    Ok(spec
        .hosts
        .iter()
        .map(|host| ExternalService {
            host: host.clone(),
            ports: spec
                .ports
                .iter()
                .map(|port| {
                    let target = port.target_port.unwrap_or(port.number);
                    let endpoints = spec
                        .endpoints
                        .iter()
                        .map(|endpoint| {
                            (
                                endpoint.address.clone(),
                                endpoint.ports.get(&port.name).copied().unwrap_or(target),
                            )
                        })
                        .collect();
                    (port.number, endpoints)
                })
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_documents;

    const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: inventory-v2, namespace: shop}
spec:
  selector: {matchLabels: {app: inventory, version: v2}}
  template:
    metadata: {labels: {app: inventory, version: v2}}
    spec:
      serviceAccountName: inventory
      containers:
      - name: inventory
        image: ghcr.io/meshwasm/inventory:0.1.0
        ports: [{containerPort: 8080, name: http}]
        env: [{name: SERVICE_VERSION, value: v2}]
---
apiVersion: v1
kind: Service
metadata: {name: inventory, namespace: shop}
spec:
  selector: {app: inventory}
  ports: [{name: http, port: 8080, targetPort: 8080}]
"#;

    #[test]
    fn deployments_and_services() {
        let topology =
            Topology::from_resources(&parse_documents("app.yaml", APP, 0).unwrap()).unwrap();
        let workload = &topology.workloads[0];
        assert_eq!(workload.binary, "inventory");
        assert_eq!(workload.service_account, "inventory");
        assert_eq!(
            workload.env,
            vec![("SERVICE_VERSION".to_owned(), "v2".to_owned())]
        );
        let service = &topology.services[0];
        assert_eq!(service.fqdn(), "inventory.shop.svc.cluster.local");
        assert_eq!(topology.endpoints(service).len(), 1);
        assert!(topology.resolve_host("inventory", "shop").is_some());
        assert!(topology.resolve_host("inventory.shop", "other").is_some());
        assert!(topology.resolve_host("inventory", "other").is_none());
        assert!(topology.gateway.is_none());
    }

    #[test]
    fn service_without_pods_is_refused() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: ghost}\nspec: {selector: {app: ghost}, ports: [{port: 80}]}\n";
        let err =
            Topology::from_resources(&parse_documents("s.yaml", text, 0).unwrap()).unwrap_err();
        assert!(err.to_string().contains("selects no Deployment"), "{err}");
    }

    #[test]
    fn gateway_selecting_ingress_creates_it() {
        let text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]\n";
        let topology =
            Topology::from_resources(&parse_documents("g.yaml", text, 0).unwrap()).unwrap();
        assert_eq!(topology.gateway.unwrap().bound_gateways, vec!["shop/gw"]);
    }

    #[test]
    fn short_names_qualify_like_kubernetes_dns() {
        assert_eq!(qualify("a", "ns"), "a.ns.svc.cluster.local");
        assert_eq!(qualify("a.b", "ns"), "a.b.svc.cluster.local");
        assert_eq!(qualify("a.b.svc", "ns"), "a.b.svc.cluster.local");
        assert_eq!(qualify("auth.example.com", "ns"), "auth.example.com");
    }
}
