//! PeerAuthentication, RequestAuthentication and AuthorizationPolicy → what
//! istiod sends a sidecar or gateway: inbound filter chains per mTLS mode,
//! upstream TLS (auto mTLS and DestinationRule `tls`), the `jwt_authn`
//! filter and the `rbac` filters. Each step names the istiod code it follows
//! (istio/istio 1.30, `pilot/pkg/security/...` and `pilot/pkg/networking/core/...`).

use crate::ca;
use crate::istio::{ClientTlsSettings, WorkloadSelector};
use crate::plugins::{ListenerClass, ProxyView};
use crate::resources::{labels_match, Resource, ROOT_NAMESPACE};
use crate::topology::{Service, Topology, Workload};
use crate::traffic::{cluster_name, envoy_duration};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

// ---- security.istio.io/v1 specs (only the fields translated) ----

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerAuthenticationSpec {
    selector: Option<WorkloadSelector>,
    mtls: Option<MutualTls>,
    #[serde(default)]
    port_level_mtls: BTreeMap<u32, MutualTls>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct MutualTls {
    mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestAuthenticationSpec {
    selector: Option<WorkloadSelector>,
    #[serde(default)]
    target_refs: Vec<Value>,
    target_ref: Option<Value>,
    #[serde(default)]
    jwt_rules: Vec<JwtRule>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JwtRule {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    jwks_uri: Option<String>,
    jwks: Option<String>,
    #[serde(default)]
    from_headers: Vec<JwtHeader>,
    #[serde(default)]
    from_params: Vec<String>,
    #[serde(default)]
    from_cookies: Vec<String>,
    #[serde(default)]
    forward_original_token: bool,
    output_payload_to_header: Option<String>,
    #[serde(default)]
    output_claim_to_headers: Vec<ClaimToHeader>,
    space_delimited_claims: Option<Vec<String>>,
    timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct JwtHeader {
    name: String,
    prefix: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ClaimToHeader {
    header: String,
    claim: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationPolicySpec {
    selector: Option<WorkloadSelector>,
    #[serde(default)]
    target_refs: Vec<Value>,
    target_ref: Option<Value>,
    action: Option<String>,
    provider: Option<Value>,
    #[serde(default)]
    rules: Vec<Option<Rule>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    from: Vec<From>,
    #[serde(default)]
    to: Vec<To>,
    #[serde(default)]
    when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct From {
    source: Option<Source>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct To {
    operation: Option<Operation>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Source {
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    not_principals: Vec<String>,
    #[serde(default)]
    request_principals: Vec<String>,
    #[serde(default)]
    not_request_principals: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    not_namespaces: Vec<String>,
    #[serde(default)]
    service_accounts: Vec<String>,
    #[serde(default)]
    not_service_accounts: Vec<String>,
    #[serde(default)]
    trust_domains: Vec<String>,
    #[serde(default)]
    not_trust_domains: Vec<String>,
    #[serde(default)]
    ip_blocks: Vec<String>,
    #[serde(default)]
    not_ip_blocks: Vec<String>,
    #[serde(default)]
    remote_ip_blocks: Vec<String>,
    #[serde(default)]
    not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Operation {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    not_hosts: Vec<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    not_ports: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    not_methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    not_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

/// A policy object with the metadata its translation needs.
#[derive(Debug, Clone)]
struct Policy<T> {
    namespace: String,
    name: String,
    /// `istio.io/dry-run: "true"`: evaluated as shadow rules, never enforced.
    dry_run: bool,
    spec: T,
}

impl<T> Policy<T> {
    fn new(resource: &Resource, dry_run: bool, spec: T) -> Self {
        Self {
            namespace: resource.namespace.clone(),
            name: resource.name.clone(),
            dry_run,
            spec,
        }
    }
}

/// The effective mTLS mode of a workload port (pilot/pkg/model/authentication.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    Strict,
    Permissive,
    Disable,
}

impl MtlsMode {
    fn parse(mode: Option<&str>) -> Result<Option<Self>> {
        Ok(match mode.unwrap_or("UNSET") {
            "UNSET" => None,
            "STRICT" => Some(Self::Strict),
            "PERMISSIVE" => Some(Self::Permissive),
            "DISABLE" => Some(Self::Disable),
            other => bail!("unknown mTLS mode {other}"),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
    Audit,
}

impl Action {
    fn envoy(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "LOG",
        }
    }
}

#[derive(Debug, Default)]
pub struct SecurityConfig {
    peer: Vec<Policy<PeerAuthenticationSpec>>,
    request: Vec<Policy<RequestAuthenticationSpec>>,
    authz: Vec<(Action, Policy<AuthorizationPolicySpec>)>,
    /// What istiod would log: ignored targetRefs, skipped invalid rules.
    pub warnings: Vec<String>,
}

/// `istio.io/dry-run`, parsed as Go's strconv.ParseBool (builder.go isDryRun).
fn dry_run(resource: &Resource, warnings: &mut Vec<String>) -> bool {
    match resource
        .body
        .pointer("/metadata/annotations/istio.io~1dry-run")
        .and_then(Value::as_str)
    {
        None => false,
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
        Some(other) => {
            warnings.push(format!(
                "{} {}/{}: failed to parse the value of istio.io/dry-run: {other:?}",
                resource.kind, resource.namespace, resource.name
            ));
            false
        }
    }
}

impl SecurityConfig {
    pub fn from_resources(resources: &[Resource], topology: &Topology) -> Result<Self> {
        let mut config = Self::default();
        let mut resources: Vec<&Resource> = resources
            .iter()
            .filter(|r| r.group() == "security.istio.io")
            .collect();
        // sortConfigByCreationTime: one creation second locally, so by name then namespace.
        resources.sort_by(|a, b| (&a.name, &a.namespace).cmp(&(&b.name, &b.namespace)));
        for resource in resources {
            let dry_run = dry_run(resource, &mut config.warnings);
            match resource.kind.as_str() {
                "PeerAuthentication" => {
                    let spec: PeerAuthenticationSpec = resource.spec()?;
                    for mtls in spec.mtls.iter().chain(spec.port_level_mtls.values()) {
                        MtlsMode::parse(mtls.mode.as_deref())
                            .with_context(|| format!("{}: {}", resource.source, resource.id()))?;
                    }
                    config.peer.push(Policy::new(resource, dry_run, spec));
                }
                "RequestAuthentication" => {
                    let spec: RequestAuthenticationSpec = resource.spec()?;
                    if has_target_refs(&spec.target_refs, &spec.target_ref) {
                        config.warnings.push(ignored_target_refs(resource));
                    }
                    for rule in &spec.jwt_rules {
                        jwt_provider(rule, topology, false)
                            .with_context(|| format!("{}: {}", resource.source, resource.id()))?;
                    }
                    config.request.push(Policy::new(resource, dry_run, spec));
                }
                "AuthorizationPolicy" => {
                    let spec: AuthorizationPolicySpec = resource.spec()?;
                    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
                        "ALLOW" => Action::Allow,
                        "DENY" => Action::Deny,
                        "AUDIT" => Action::Audit,
                        "CUSTOM" => bail!(
                            "{}: {} uses action CUSTOM (provider {}), which needs an ext_authz extension provider in meshConfig; the local mesh has none, so it refuses the policy rather than ignore it",
                            resource.source,
                            resource.id(),
                            spec.provider.as_ref().and_then(|p| p.get("name")).and_then(Value::as_str).unwrap_or("unset")
                        ),
                        other => bail!("{}: {} has unknown action {other}", resource.source, resource.id()),
                    };
                    if has_target_refs(&spec.target_refs, &spec.target_ref) {
                        config.warnings.push(ignored_target_refs(resource));
                    }
                    for (index, rule) in spec.rules.iter().enumerate() {
                        let name = policy_name(&resource.namespace, &resource.name, index);
                        match rule {
                            None => config.warnings.push(format!("skipped nil rule {name}")),
                            Some(rule) => {
                                if let Err(err) = rbac_policy(&resource.namespace, rule, action) {
                                    config
                                        .warnings
                                        .push(format!("skipped invalid rule {name}: {err}"));
                                }
                            }
                        }
                    }
                    config
                        .authz
                        .push((action, Policy::new(resource, dry_run, spec)));
                }
                _ => {}
            }
        }
        Ok(config)
    }

    /// ComposePeerAuthentication (pilot/pkg/security/authn/policy_applier.go):
    /// PERMISSIVE unless the oldest mesh-wide (root namespace, no selector),
    /// then namespace, then workload policy sets a mode; UNSET inherits;
    /// `portLevelMtls` of the workload policy decides its ports.
    pub fn inbound_mode(&self, proxy: &ProxyView<'_>, port: u16) -> MtlsMode {
        let narrowest = |workload: bool, root: bool| {
            self.peer.iter().find(|policy| {
                let has_selector = policy
                    .spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| !s.match_labels.is_empty());
                match (workload, root) {
                    (true, _) => {
                        has_selector
                            && policy.namespace != ROOT_NAMESPACE
                            && policy.namespace == proxy.namespace
                            && applies_to(&policy.namespace, &policy.spec.selector, proxy)
                    }
                    (false, true) => !has_selector && policy.namespace == ROOT_NAMESPACE,
                    (false, false) => !has_selector && policy.namespace == proxy.namespace,
                }
            })
        };
        let mode_of = |mtls: &Option<MutualTls>| {
            mtls.as_ref()
                .and_then(|m| MtlsMode::parse(m.mode.as_deref()).ok().flatten())
        };
        let mut mode = MtlsMode::Permissive;
        for policy in [narrowest(false, true), narrowest(false, false)]
            .into_iter()
            .flatten()
        {
            mode = mode_of(&policy.spec.mtls).unwrap_or(mode);
        }
        if let Some(workload) = narrowest(true, false) {
            mode = mode_of(&workload.spec.mtls).unwrap_or(mode);
            if let Some(port_mtls) = workload.spec.port_level_mtls.get(&u32::from(port)) {
                mode = mode_of(&Some(port_mtls.clone())).unwrap_or(mode);
            }
        }
        mode
    }

    /// Namespace or mesh mode of a Service (push_context.go
    /// BestEffortInferServiceMTLSMode): what auto mTLS looks at.
    fn service_mode(&self, namespace: &str) -> MtlsMode {
        let labels = BTreeMap::new();
        // A view with no labels matches only selector-less policies.
        self.inbound_mode(
            &ProxyView {
                namespace,
                labels: &labels,
            },
            0,
        )
    }

    /// The `jwt_authn` filter of a proxy (policy_applier.go
    /// convertToEnvoyJwtConfig), if a RequestAuthentication applies; none on
    /// sidecar outbound listeners (plugin/authn/authentication.go).
    pub fn jwt_filter(
        &self,
        proxy: &ProxyView<'_>,
        class: ListenerClass,
        topology: &Topology,
    ) -> Result<Option<Value>> {
        if class == ListenerClass::SidecarOutbound {
            return Ok(None);
        }
        let mut rules: Vec<&JwtRule> = self
            .request
            .iter()
            .filter(|p| {
                !has_target_refs(&p.spec.target_refs, &p.spec.target_ref)
                    && applies_to(&p.namespace, &p.spec.selector, proxy)
            })
            .flat_map(|p| &p.spec.jwt_rules)
            .collect();
        if rules.is_empty() {
            return Ok(None);
        }
        // Sorted by issuer for a deterministic config.
        rules.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        // Gateways clear the route cache so routes can match on claims.
        let clear_route_cache = class == ListenerClass::Gateway;
        let mut providers = serde_json::Map::new();
        let mut inner_and = Vec::new();
        let mut outer_or = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let name = format!("origins-{index}");
            providers.insert(
                name.clone(),
                jwt_provider(rule, topology, clear_route_cache)?,
            );
            inner_and.push(json!({"requires_any": {"requirements": [{"provider_name": name}, {"allow_missing": {}}]}}));
            outer_or.push(json!({"provider_name": name}));
        }
        let requires = if let [only] = inner_and.as_slice() {
            only.clone()
        } else {
            outer_or.push(json!({"requires_all": {"requirements": inner_and}}));
            json!({"requires_any": {"requirements": outer_or}})
        };
        Ok(Some(json!({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": providers,
                "rules": [{"match": {"prefix": "/"}, "requires": requires}],
                "bypass_cors_preflight": true,
            },
        })))
    }

    /// The RBAC filters of a proxy (pilot/pkg/security/authz/builder/builder.go
    /// `build`): AUDIT, then DENY, then ALLOW, each one filter with enforced
    /// rules and dry-run policies as shadow rules; none on sidecar outbound
    /// listeners (plugin/authz/authorization.go). `local_port` maps the port
    /// a policy names (the container or gateway target port) to the port the
    /// local listener binds, which is what Envoy sees as destination port.
    pub fn rbac_filters(
        &self,
        proxy: &ProxyView<'_>,
        class: ListenerClass,
        local_port: &dyn Fn(u32) -> u32,
    ) -> Vec<Value> {
        if class == ListenerClass::SidecarOutbound {
            return Vec::new();
        }
        let mut filters = Vec::new();
        for action in [Action::Audit, Action::Deny, Action::Allow] {
            let policies: Vec<&Policy<AuthorizationPolicySpec>> = self
                .authz
                .iter()
                .filter(|(a, p)| {
                    *a == action
                        && !has_target_refs(&p.spec.target_refs, &p.spec.target_ref)
                        && applies_to(&p.namespace, &p.spec.selector, proxy)
                })
                .map(|(_, p)| p)
                .collect();
            if policies.is_empty() {
                continue;
            }
            let mut enforced: Option<serde_json::Map<String, Value>> = None;
            let mut shadow: Option<serde_json::Map<String, Value>> = None;
            for policy in policies {
                let target = if policy.dry_run {
                    &mut shadow
                } else {
                    &mut enforced
                };
                let target = target.get_or_insert_with(serde_json::Map::new);
                for (index, rule) in policy.spec.rules.iter().enumerate() {
                    let Some(rule) = rule else { continue };
                    if let Ok(mut generated) = rbac_policy(&policy.namespace, rule, action) {
                        map_destination_ports(&mut generated, local_port);
                        target.insert(
                            policy_name(&policy.namespace, &policy.name, index),
                            generated,
                        );
                    }
                }
                if policy.spec.rules.is_empty() {
                    // An explicit policy that never matches (rbacPolicyMatchNever).
                    target.insert(
                        policy_name(&policy.namespace, &policy.name, 0),
                        json!({"permissions": [{"not_rule": {"any": true}}], "principals": [{"not_id": {"any": true}}]}),
                    );
                }
            }
            let mut config =
                json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"});
            if let Some(policies) = enforced {
                config["rules"] = json!({"action": action.envoy(), "policies": policies});
            }
            if let Some(policies) = shadow {
                config["shadow_rules"] = json!({"action": action.envoy(), "policies": policies});
                // shadowRuleStatPrefix: ALLOW and DENY dry runs have their own stats.
                let prefix = match action {
                    Action::Allow => "istio_dry_run_allow_",
                    Action::Deny => "istio_dry_run_deny_",
                    Action::Audit => "",
                };
                config["shadow_rules_stat_prefix"] = json!(prefix);
            }
            filters.push(json!({"name": "envoy.filters.http.rbac", "typed_config": config}));
        }
        filters
    }

    /// Upstream TLS of an outbound cluster (cluster_tls.go
    /// buildUpstreamTLSSettings / applyUpstreamTLSSettings): a DestinationRule's
    /// `tls` as given (ISTIO_MUTUAL filled with the service's identities and
    /// SNI); without one, auto mTLS: ISTIO_MUTUAL through a transport socket
    /// match on endpoints labelled `tlsMode: istio` (endpoint_builder.go
    /// mtlsChecker: sidecar endpoints whose port is not DISABLE), unless the
    /// Service's namespace or mesh mode is DISABLE. `endpoints` are in the
    /// cluster's load-assignment order.
    pub fn apply_upstream_tls(
        &self,
        cluster: &mut Value,
        target: &UpstreamTarget<'_>,
    ) -> Result<()> {
        let UpstreamTarget {
            service,
            port,
            subset,
            endpoints,
            all_endpoints,
            tls,
        } = *target;
        let mut service_accounts: Vec<String> = all_endpoints
            .iter()
            .map(|w| ca::spiffe_id(&w.namespace, &w.service_account))
            .collect();
        service_accounts.sort();
        service_accounts.dedup();
        let fqdn = service.fqdn();
        // model.BuildDNSSrvSubsetKey
        let sni = format!("outbound_.{port}_.{}_.{fqdn}", subset.unwrap_or(""));
        let name = cluster_name(port, subset, &fqdn);
        let endpoint_mtls = |workload: &Workload| match tls {
            Some(tls) => tls.mode.as_deref() == Some("ISTIO_MUTUAL"),
            None => {
                let proxy = ProxyView {
                    namespace: &workload.namespace,
                    labels: &workload.labels,
                };
                self.inbound_mode(&proxy, workload.container_port) != MtlsMode::Disable
            }
        };
        let labelled: Vec<bool> = endpoints.iter().map(|w| endpoint_mtls(w)).collect();
        if let Some(lb_endpoints) = cluster
            .pointer_mut("/load_assignment/endpoints/0/lb_endpoints")
            .and_then(Value::as_array_mut)
        {
            for (endpoint, istio) in lb_endpoints.iter_mut().zip(&labelled) {
                if *istio {
                    endpoint["metadata"] = json!({"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}});
                }
            }
        }
        let socket = match tls {
            Some(tls) => match tls.mode.as_deref().unwrap_or("DISABLE") {
                "DISABLE" => None,
                "ISTIO_MUTUAL" => Some(istio_mutual(
                    tls.subject_alt_names.as_ref().unwrap_or(&service_accounts),
                    tls.sni.as_deref().unwrap_or(&sni),
                )),
                "SIMPLE" => Some(user_tls(tls, &name, false)?),
                "MUTUAL" => Some(user_tls(tls, &name, true)?),
                other => bail!("cluster {name}: unknown tls mode {other}"),
            },
            None => {
                if self.service_mode(&service.namespace) == MtlsMode::Disable {
                    None
                } else {
                    cluster["transport_socket_matches"] = json!([
                        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": istio_mutual(&service_accounts, &sni)},
                        {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}},
                    ]);
                    return Ok(());
                }
            }
        };
        if let Some(socket) = socket {
            cluster["transport_socket"] = socket;
        }
        Ok(())
    }
}

/// One outbound cluster of a Service, for [`SecurityConfig::apply_upstream_tls`].
#[derive(Clone, Copy)]
pub struct UpstreamTarget<'a> {
    pub service: &'a Service,
    pub port: u16,
    pub subset: Option<&'a str>,
    /// The cluster's endpoints, in load-assignment order.
    pub endpoints: &'a [&'a Workload],
    /// Every endpoint of the Service: their identities are the SANs accepted.
    pub all_endpoints: &'a [&'a Workload],
    /// The DestinationRule's `tls` for this cluster, if any.
    pub tls: Option<&'a ClientTlsSettings>,
}

fn has_target_refs(target_refs: &[Value], target_ref: &Option<Value>) -> bool {
    !target_refs.is_empty() || target_ref.is_some()
}

fn ignored_target_refs(resource: &Resource) -> String {
    format!(
        "{} {}/{} applies to no proxy: it sets targetRefs, which sidecars and the classic ingress gateway ignore",
        resource.kind, resource.namespace, resource.name
    )
}

/// pilot/pkg/model/policyattachment.go: a policy of the proxy's namespace or
/// of the root namespace, whose selector (if any) matches the proxy's labels.
fn applies_to(namespace: &str, selector: &Option<WorkloadSelector>, proxy: &ProxyView<'_>) -> bool {
    (namespace == proxy.namespace || namespace == ROOT_NAMESPACE)
        && selector
            .as_ref()
            .is_none_or(|s| labels_match(&s.match_labels, proxy.labels))
}

/// builder.go policyName.
fn policy_name(namespace: &str, name: &str, rule: usize) -> String {
    format!("ns[{namespace}]-policy[{name}]-rule[{rule}]")
}

/// One JWT provider (policy_applier.go convertToEnvoyJwtConfig). `jwksUri`
/// is fetched by Envoy through the cluster of the ServiceEntry that declares
/// its host (istiod's `PILOT_JWT_ENABLE_REMOTE_JWKS=envoy` behaviour; by
/// default istiod fetches the keys itself and inlines them).
fn jwt_provider(rule: &JwtRule, topology: &Topology, clear_route_cache: bool) -> Result<Value> {
    let mut claims: Vec<String> = rule.space_delimited_claims.clone().unwrap_or_default();
    claims.extend(["permission".to_owned(), "scope".to_owned()]);
    claims.sort();
    claims.dedup();
    let mut provider = json!({
        "issuer": rule.issuer,
        "forward": rule.forward_original_token,
        "payload_in_metadata": "payload",
        "normalize_payload_in_metadata": {"space_delimited_claims": claims},
        "clear_route_cache": clear_route_cache,
    });
    if !rule.audiences.is_empty() {
        provider["audiences"] = json!(rule.audiences);
    }
    if let Some(header) = &rule.output_payload_to_header {
        provider["forward_payload_header"] = json!(header);
    }
    if !rule.output_claim_to_headers.is_empty() {
        provider["claim_to_headers"] = json!(rule
            .output_claim_to_headers
            .iter()
            .map(|c| json!({"header_name": c.header, "claim_name": c.claim}))
            .collect::<Vec<_>>());
    }
    if !rule.from_headers.is_empty() {
        provider["from_headers"] = json!(rule
            .from_headers
            .iter()
            .map(|h| {
                let mut header = json!({"name": h.name});
                if let Some(prefix) = &h.prefix {
                    header["value_prefix"] = json!(prefix);
                }
                header
            })
            .collect::<Vec<_>>());
    }
    if !rule.from_params.is_empty() {
        provider["from_params"] = json!(rule.from_params);
    }
    if !rule.from_cookies.is_empty() {
        provider["from_cookies"] = json!(rule.from_cookies);
    }
    let timeout = envoy_duration(rule.timeout.as_deref().unwrap_or("5s"))?;
    match (&rule.jwks, &rule.jwks_uri) {
        (Some(jwks), _) if !jwks.is_empty() => {
            provider["local_jwks"] = json!({"inline_string": jwks});
        }
        (_, Some(uri)) if !uri.is_empty() => {
            provider["remote_jwks"] = json!({
                "http_uri": {"uri": uri, "cluster": jwks_cluster(uri, topology)?, "timeout": timeout},
                "cache_duration": "300s",
            });
        }
        _ => bail!(
            "jwtRule for issuer {} has neither jwks nor jwksUri",
            rule.issuer
        ),
    }
    Ok(provider)
}

/// security.ParseJwksURI + model.LookupCluster: the ServiceEntry cluster of
/// the URI's host and port.
fn jwks_cluster(uri: &str, topology: &Topology) -> Result<String> {
    let (scheme, rest) = uri
        .split_once("://")
        .with_context(|| format!("jwksUri {uri} has no scheme"))?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        other => bail!("jwksUri {uri}: unsupported scheme {other}"),
    };
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u32>()
                .with_context(|| format!("jwksUri {uri}: bad port"))?,
        ),
        None => (authority, default_port),
    };
    if !topology
        .external
        .iter()
        .any(|e| e.host == host && e.ports.iter().any(|(p, _)| *p == port))
    {
        bail!("jwksUri {uri}: no ServiceEntry declares {host}:{port}; the local mesh fetches JWKS through it (istiod: PILOT_JWT_ENABLE_REMOTE_JWKS=envoy)");
    }
    Ok(cluster_name(port as u16, None, host))
}

// ---- AuthorizationPolicy rules → Envoy RBAC (pilot/pkg/security/authz/model) ----

/// What a rule key generates (model/generator.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generator {
    SrcIp,
    RemoteIp,
    SrcNamespace,
    SrcTrustDomain,
    SrcServiceAccount,
    SrcPrincipal,
    RequestPrincipal,
    RequestAudiences,
    RequestPresenter,
    RequestHeader,
    RequestClaims,
    DestIp,
    DestPort,
    ConnSni,
    EnvoyFilter,
    Host,
    Path,
    Method,
}

impl Generator {
    /// Extended generators turn all values into one matcher.
    fn extended(self) -> bool {
        matches!(
            self,
            Self::RequestPrincipal
                | Self::RequestAudiences
                | Self::RequestPresenter
                | Self::RequestClaims
                | Self::EnvoyFilter
        )
    }
}

#[derive(Debug, Clone)]
struct RuleItem {
    key: String,
    values: Vec<String>,
    not_values: Vec<String>,
    generator: Generator,
}

/// model.New + Model.Generate for one rule: a `Policy` of permissions (one
/// per `to`, or one) and principals (one per `from`, or one). An error means
/// the rule is skipped (ALLOW) — a DENY or AUDIT rule instead drops only the
/// bad value, which widens it (rule.checkError).
fn rbac_policy(policy_namespace: &str, rule: &Rule, action: Action) -> Result<Value> {
    let mut base_permission = Vec::new();
    let mut base_principal = Vec::new();
    for when in &rule.when {
        let key = when.key.as_str();
        let (generator, is_permission) = match key {
            "destination.ip" => (Generator::DestIp, true),
            "destination.port" => (Generator::DestPort, true),
            "connection.sni" => (Generator::ConnSni, true),
            k if k.starts_with("experimental.envoy.filters.") => (Generator::EnvoyFilter, true),
            "source.ip" => (Generator::SrcIp, false),
            "remote.ip" => (Generator::RemoteIp, false),
            "source.namespace" => (Generator::SrcNamespace, false),
            "source.trustDomain" => (Generator::SrcTrustDomain, false),
            "source.serviceAccount" => (Generator::SrcServiceAccount, false),
            "source.principal" => (Generator::SrcPrincipal, false),
            "request.auth.principal" => (Generator::RequestPrincipal, false),
            "request.auth.audiences" => (Generator::RequestAudiences, false),
            "request.auth.presenter" => (Generator::RequestPresenter, false),
            k if k.starts_with("request.headers") => (Generator::RequestHeader, false),
            k if k.starts_with("request.auth.claims") => (Generator::RequestClaims, false),
            other => bail!("unknown attribute {other}"),
        };
        let item = RuleItem {
            key: key.to_owned(),
            values: when.values.clone(),
            not_values: when.not_values.clone(),
            generator,
        };
        if is_permission {
            base_permission.push(item);
        } else {
            base_principal.push(item);
        }
    }
    let front =
        |list: &mut Vec<RuleItem>, generator, key: &str, values: &[String], not: &[String]| {
            if !values.is_empty() || !not.is_empty() {
                list.insert(
                    0,
                    RuleItem {
                        key: key.to_owned(),
                        values: values.to_vec(),
                        not_values: not.to_vec(),
                        generator,
                    },
                );
            }
        };
    let mut principal_lists = Vec::new();
    for from in &rule.from {
        let mut merged = base_principal.clone();
        if let Some(s) = &from.source {
            front(
                &mut merged,
                Generator::SrcIp,
                "source.ip",
                &s.ip_blocks,
                &s.not_ip_blocks,
            );
            front(
                &mut merged,
                Generator::RemoteIp,
                "remote.ip",
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
            );
            front(
                &mut merged,
                Generator::SrcNamespace,
                "source.namespace",
                &s.namespaces,
                &s.not_namespaces,
            );
            front(
                &mut merged,
                Generator::SrcTrustDomain,
                "source.trustDomain",
                &s.trust_domains,
                &s.not_trust_domains,
            );
            front(
                &mut merged,
                Generator::SrcServiceAccount,
                "source.serviceAccount",
                &s.service_accounts,
                &s.not_service_accounts,
            );
            front(
                &mut merged,
                Generator::RequestPrincipal,
                "request.auth.principal",
                &s.request_principals,
                &s.not_request_principals,
            );
            front(
                &mut merged,
                Generator::SrcPrincipal,
                "source.principal",
                &s.principals,
                &s.not_principals,
            );
        }
        principal_lists.push(merged);
    }
    if rule.from.is_empty() {
        principal_lists.push(base_principal);
    }
    let mut permission_lists = Vec::new();
    for to in &rule.to {
        let mut merged = base_permission.clone();
        if let Some(o) = &to.operation {
            front(
                &mut merged,
                Generator::DestPort,
                "destination.port",
                &o.ports,
                &o.not_ports,
            );
            front(
                &mut merged,
                Generator::Path,
                "path-matcher",
                &o.paths,
                &o.not_paths,
            );
            front(
                &mut merged,
                Generator::Method,
                ":method",
                &o.methods,
                &o.not_methods,
            );
            front(
                &mut merged,
                Generator::Host,
                ":authority",
                &o.hosts,
                &o.not_hosts,
            );
        }
        permission_lists.push(merged);
    }
    if rule.to.is_empty() {
        permission_lists.push(base_permission);
    }
    let mut permissions = Vec::new();
    for list in &permission_lists {
        let mut and = Vec::new();
        for item in list {
            and.extend(item_matchers(item, policy_namespace, action, true)?);
        }
        if and.is_empty() {
            and.push(json!({"any": true}));
        }
        permissions.push(json!({"and_rules": {"rules": and}}));
    }
    let mut principals = Vec::new();
    for list in &principal_lists {
        let mut and = Vec::new();
        for item in list {
            and.extend(item_matchers(item, policy_namespace, action, false)?);
        }
        if and.is_empty() {
            and.push(json!({"any": true}));
        }
        principals.push(json!({"and_ids": {"ids": and}}));
    }
    Ok(json!({"permissions": permissions, "principals": principals}))
}

/// rule.permission / rule.principal: OR of the values, NOT of the OR of the
/// not-values (extended generators: one matcher each).
fn item_matchers(
    item: &RuleItem,
    policy_namespace: &str,
    action: Action,
    permission: bool,
) -> Result<Vec<Value>> {
    let (or_key, not_key, set_key) = if permission {
        ("or_rules", "not_rule", "rules")
    } else {
        ("or_ids", "not_id", "ids")
    };
    let check = |result: Result<Value>| -> Result<Option<Value>> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(err) if action == Action::Allow => Err(err),
            Err(_) => Ok(None),
        }
    };
    let mut out = Vec::new();
    for (values, negate) in [(&item.values, false), (&item.not_values, true)] {
        if values.is_empty() {
            continue;
        }
        let matcher = if item.generator.extended() {
            check(extended(item, values, permission))?
        } else {
            let mut or = Vec::new();
            for value in values {
                if let Some(m) = check(single(item, value, policy_namespace, permission))? {
                    or.push(m);
                }
            }
            (!or.is_empty()).then(|| json!({or_key: {set_key: or}}))
        };
        if let Some(matcher) = matcher {
            out.push(if negate {
                json!({not_key: matcher})
            } else {
                matcher
            });
        }
    }
    Ok(out)
}

fn unimplemented(item: &RuleItem, permission: bool) -> anyhow::Error {
    anyhow::anyhow!(
        "{} cannot be used as a {}",
        item.key,
        if permission {
            "permission"
        } else {
            "principal"
        }
    )
}

/// The non-extended generators (model/generator.go `permission`/`principal`).
fn single(item: &RuleItem, value: &str, policy_namespace: &str, permission: bool) -> Result<Value> {
    use Generator as G;
    Ok(match (item.generator, permission) {
        (G::DestIp, true) => json!({"destination_ip": cidr(value)?}),
        (G::DestPort, true) => json!({"destination_port": port(value)?}),
        (G::ConnSni, true) => json!({"requested_server_name": string_matcher(value, "")}),
        (G::Host, true) => json!({"header": host_matcher(value)}),
        (G::Method, true) => json!({"header": header_matcher(":method", value)}),
        (G::Path, true) => path_permission(value),
        (G::SrcIp, false) => json!({"direct_remote_ip": cidr(value)?}),
        (G::RemoteIp, false) => json!({"remote_ip": cidr(value)?}),
        (G::SrcNamespace, false) => {
            let namespace = value
                .split('*')
                .map(regex_quote)
                .collect::<Vec<_>>()
                .join(".*");
            authenticated(json!({"safe_regex": {"regex": format!(".*/ns/{namespace}/.*")}}))
        }
        (G::SrcTrustDomain, false) => authenticated(match value {
            "*" => json!({"prefix": "spiffe://"}),
            v if !v.contains('*') => json!({"prefix": format!("spiffe://{v}/")}),
            v => {
                let (before, after) = v.split_once('*').unwrap_or((v, ""));
                json!({"safe_regex": {"regex": format!("spiffe://{}[^/]*{}/.*", regex_quote(before), regex_quote(after))}})
            }
        }),
        (G::SrcServiceAccount, false) => {
            let (namespace, account) = value.split_once('/').unwrap_or((policy_namespace, value));
            authenticated(json!({"safe_regex": {"regex": format!(
                "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
                regex_quote(namespace),
                regex_quote(account)
            )}}))
        }
        (G::SrcPrincipal, false) => authenticated(string_matcher(value, "spiffe://")),
        (G::RequestHeader, false) => {
            let name = in_brackets(item.key.trim_start_matches("request.headers"))?;
            json!({"header": header_matcher(&name, value)})
        }
        _ => return Err(unimplemented(item, permission)),
    })
}

/// The extended generators: one matcher for all values.
fn extended(item: &RuleItem, values: &[String], permission: bool) -> Result<Value> {
    use Generator as G;
    Ok(match (item.generator, permission) {
        (G::EnvoyFilter, true) => {
            // "experimental.envoy.filters.a.b[c]" → filter "envoy.filters.a.b", key "c".
            let trimmed = item
                .key
                .trim_start_matches("experimental.")
                .trim_end_matches(']');
            let (filter, key) = trimmed
                .split_once('[')
                .with_context(|| format!("invalid key: {}", item.key))?;
            let matchers: Vec<Value> = values
                .iter()
                .map(|value| {
                    if value.starts_with('[') && value.ends_with(']') {
                        json!({"list_match": {"one_of": {"string_match": string_matcher(value.trim_matches(['[', ']']), "")}}})
                    } else {
                        json!({"string_match": string_matcher(value, "")})
                    }
                })
                .collect();
            json!({"metadata": {"filter": filter, "path": [{"key": key}], "value": or_matcher(matchers)}})
        }
        (G::RequestPrincipal, false) => {
            let any = json!({"safe_regex": {"regex": ".+"}});
            let mut or = Vec::new();
            for value in values {
                // The last `/` splits issuer (often a URL) and subject.
                let found = value.rfind('/');
                let (iss, sub) = match found {
                    Some(index) => (&value[..index], &value[index + 1..]),
                    None => (value.as_str(), ""),
                };
                let (match_iss, match_sub) = if value == "*" {
                    (any.clone(), any.clone())
                } else if let Some(rest) = value.strip_prefix('*') {
                    if found.is_some() {
                        let iss_match = if iss == "*" {
                            any.clone()
                        } else {
                            json!({"suffix": iss.trim_start_matches('*')})
                        };
                        (iss_match, json!({"exact": sub}))
                    } else {
                        (any.clone(), json!({"suffix": rest}))
                    }
                } else if let Some(rest) = value.strip_suffix('*') {
                    if found.is_some() {
                        let sub_match = if sub == "*" {
                            any.clone()
                        } else {
                            json!({"prefix": sub.trim_end_matches('*')})
                        };
                        (json!({"exact": iss}), sub_match)
                    } else {
                        (json!({"prefix": rest}), any.clone())
                    }
                } else {
                    (json!({"exact": iss}), json!({"exact": sub}))
                };
                or.push(json!({"and_ids": {"ids": [
                    {"metadata": jwt_claim_string("iss", match_iss)},
                    {"metadata": jwt_claim_string("sub", match_sub)},
                ]}}));
            }
            if let [only] = or.as_slice() {
                only.clone()
            } else {
                json!({"or_ids": {"ids": or}})
            }
        }
        (G::RequestAudiences, false) => {
            json!({"metadata": jwt_claims_list(&["aud".to_owned()], values)})
        }
        (G::RequestPresenter, false) => {
            json!({"metadata": jwt_claims_list(&["azp".to_owned()], values)})
        }
        (G::RequestClaims, false) => {
            let claims = nested_brackets(item.key.trim_start_matches("request.auth.claims"))?;
            json!({"metadata": jwt_claims_list(&claims, values)})
        }
        _ => return Err(unimplemented(item, permission)),
    })
}

/// matcher.StringMatcherWithPrefix: `*` any non-empty, `*x` suffix, `x*`
/// prefix, else exact; with a prefix (`spiffe://`) a suffix becomes a regex.
fn string_matcher(value: &str, prefix: &str) -> Value {
    if value == "*" {
        json!({"safe_regex": {"regex": ".+"}})
    } else if let Some(rest) = value.strip_prefix('*') {
        if prefix.is_empty() {
            json!({"suffix": rest})
        } else {
            json!({"safe_regex": {"regex": format!("{prefix}.*{}", regex_quote(rest))}})
        }
    } else if let Some(rest) = value.strip_suffix('*') {
        json!({"prefix": format!("{prefix}{rest}")})
    } else {
        json!({"exact": format!("{prefix}{value}")})
    }
}

/// matcher.HeaderMatcher.
fn header_matcher(name: &str, value: &str) -> Value {
    if value == "*" {
        json!({"name": name, "present_match": true})
    } else if let Some(rest) = value.strip_prefix('*') {
        json!({"name": name, "string_match": {"suffix": rest}})
    } else if let Some(rest) = value.strip_suffix('*') {
        json!({"name": name, "string_match": {"prefix": rest}})
    } else {
        json!({"name": name, "string_match": {"exact": value}})
    }
}

/// matcher.HostMatcher: HeaderMatcher on :authority, ignoring case.
fn host_matcher(value: &str) -> Value {
    let mut matcher = header_matcher(":authority", value);
    if let Some(string_match) = matcher.get_mut("string_match") {
        string_match["ignore_case"] = json!(true);
    }
    matcher
}

/// pathGenerator: `{*}`/`{**}` templates become Envoy URI templates.
fn path_permission(value: &str) -> Value {
    if value.contains("{*}") || value.contains("{**}") {
        json!({"uri_template": {"name": "uri-template", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
            "path_template": value.replace("{**}", "**").replace("{*}", "*"),
        }}})
    } else {
        json!({"url_path": {"path": string_matcher(value, "")}})
    }
}

/// principalAuthenticated (sidecars and gateways match the peer certificate).
fn authenticated(name: Value) -> Value {
    json!({"authenticated": {"principal_name": name}})
}

/// util.AddrStrToCidrRange.
fn cidr(value: &str) -> Result<Value> {
    let (address, length) = match value.split_once('/') {
        Some((address, length)) => (address, Some(length)),
        None => (value, None),
    };
    let ip: std::net::IpAddr = address
        .parse()
        .with_context(|| format!("invalid IP address {value}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let length = match length {
        Some(length) => length
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .with_context(|| format!("invalid prefix length in {value}"))?,
        None => max,
    };
    Ok(json!({"address_prefix": ip.to_string(), "prefix_len": length}))
}

/// convertToPort.
fn port(value: &str) -> Result<u32> {
    value
        .parse::<u32>()
        .ok()
        .filter(|p| *p <= 65535)
        .with_context(|| format!("invalid port {value}"))
}

fn or_matcher(mut matchers: Vec<Value>) -> Value {
    if matchers.len() == 1 {
        matchers.remove(0)
    } else {
        json!({"or_match": {"value_matchers": matchers}})
    }
}

/// MetadataStringMatcherForJWTClaim: jwt_authn's `payload.<claim>`.
fn jwt_claim_string(claim: &str, matcher: Value) -> Value {
    json!({"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": claim}], "value": {"string_match": matcher}})
}

/// MetadataListValueMatcherForJWTClaims with the extended JWT matcher: the
/// claim (at a nested path) is one of the values, as a list element or as a
/// plain string.
fn jwt_claims_list(claims: &[String], values: &[String]) -> Value {
    let value = or_matcher(
        values
            .iter()
            .map(|v| json!({"string_match": string_matcher(v, "")}))
            .collect(),
    );
    let mut path = vec![json!({"key": "payload"})];
    path.extend(claims.iter().map(|c| json!({"key": c})));
    json!({
        "filter": "envoy.filters.http.jwt_authn",
        "path": path,
        "value": {"or_match": {"value_matchers": [{"list_match": {"one_of": value.clone()}}, value]}},
    })
}

/// extractNameInBrackets.
fn in_brackets(text: &str) -> Result<String> {
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .map(str::to_owned)
        .with_context(|| format!("expecting format [<NAME>], but found {text}"))
}

/// extractNameInNestedBrackets: `[a][b]` → [a, b]; otherwise one name.
fn nested_brackets(text: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            return Ok(vec![in_brackets(text)?]);
        };
        let Some(end) = inner
            .find(['[', ']'])
            .filter(|i| inner[*i..].starts_with(']'))
        else {
            return Ok(vec![in_brackets(text)?]);
        };
        names.push(inner[..end].to_owned());
        rest = &inner[end + 1..];
    }
    if names.is_empty() {
        return Ok(vec![in_brackets(text)?]);
    }
    Ok(names)
}

/// Go's regexp.QuoteMeta.
fn regex_quote(text: &str) -> String {
    text.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// Rewrites `destination_port` matchers to the locally bound port.
fn map_destination_ports(value: &mut Value, local_port: &dyn Fn(u32) -> u32) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if key == "destination_port" {
                    if let Some(port) = inner.as_u64().and_then(|p| u32::try_from(p).ok()) {
                        *inner = json!(local_port(port));
                    }
                } else {
                    map_destination_ports(inner, local_port);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| map_destination_ports(item, local_port)),
        _ => {}
    }
}

// ---- TLS contexts ----

/// cluster_tls.go ISTIO_MUTUAL: the workload certificate, the mesh root,
/// SAN check against the destination's identities, Istio's in-mesh ALPN.
fn istio_mutual(subject_alt_names: &[String], sni: &str) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": sni,
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                "alpn_protocols": ["istio-peer-exchange", "istio"],
                "tls_certificate_sds_secret_configs": [{"name": "default"}],
                "combined_validation_context": {
                    "default_validation_context": {"match_subject_alt_names": subject_alt_names.iter().map(|san| json!({"exact": san})).collect::<Vec<_>>()},
                    "validation_context_sds_secret_config": {"name": "ROOTCA"},
                },
            },
        },
    })
}

/// cluster_tls.go constructUpstreamTLS: SIMPLE and MUTUAL with the files the
/// DestinationRule names (credentialName needs Kubernetes secrets).
fn user_tls(tls: &ClientTlsSettings, cluster: &str, mutual: bool) -> Result<Value> {
    if tls.credential_name.is_some() {
        bail!("cluster {cluster}: tls.credentialName needs Kubernetes secrets; give certificate files instead");
    }
    let mut common = json!({
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
    });
    let mut validation = json!({});
    if let Some(ca) = &tls.ca_certificates {
        validation["trusted_ca"] = json!({"filename": ca});
    }
    if let Some(sans) = &tls.subject_alt_names {
        validation["match_subject_alt_names"] =
            json!(sans.iter().map(|s| json!({"exact": s})).collect::<Vec<_>>());
    }
    if tls.insecure_skip_verify != Some(true) && validation != json!({}) {
        common["validation_context"] = validation;
    }
    if mutual {
        let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key) else {
            bail!("cluster {cluster}: tls mode MUTUAL needs clientCertificate and privateKey");
        };
        common["tls_certificates"] =
            json!([{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}]);
    }
    let mut context = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    });
    if let Some(sni) = &tls.sni {
        context["sni"] = json!(sni);
    }
    Ok(json!({"name": "envoy.transport_sockets.tls", "typed_config": context}))
}

/// The inbound filter chains of one port (filterchain_options.go
/// getFilterChainMatchOptions, HTTP): STRICT one TLS chain; PERMISSIVE a TLS
/// chain for Istio's mTLS ALPNs plus a plaintext one; DISABLE plaintext.
/// Each is (filter_chain_match, transport_socket).
pub fn inbound_chains(mode: MtlsMode) -> Vec<(Value, Option<Value>)> {
    let tls = || Some(inbound_tls());
    match mode {
        MtlsMode::Strict => vec![(json!({"transport_protocol": "tls"}), tls())],
        MtlsMode::Permissive => vec![
            (
                json!({"transport_protocol": "tls", "application_protocols": ["istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"]}),
                tls(),
            ),
            (json!({"transport_protocol": "raw_buffer"}), None),
        ],
        MtlsMode::Disable => vec![(json!({"transport_protocol": "raw_buffer"}), None)],
    }
}

/// authn/utils BuildInboundTLS for HTTP: client certificate required and
/// checked against the mesh root, Istio's ciphers, ALPN h2/http1.1.
fn inbound_tls() -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_params": {
                    "cipher_suites": ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-GCM-SHA256"],
                    "tls_minimum_protocol_version": "TLSv1_2",
                    "tls_maximum_protocol_version": "TLSv1_3",
                },
                "tls_certificate_sds_secret_configs": [{"name": "default"}],
                "combined_validation_context": {
                    "default_validation_context": {},
                    "validation_context_sds_secret_config": {"name": "ROOTCA"},
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_documents;

    const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-v1, namespace: shop}
spec:
  template:
    metadata: {labels: {app: web}}
    spec: {serviceAccountName: web, containers: [{name: c, image: web, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{name: http, port: 8080}]}
"#;

    fn config(extra: &str) -> Result<(SecurityConfig, Topology)> {
        let resources = parse_documents("t.yaml", &format!("{APP}\n---\n{extra}"), 0)?;
        let topology = Topology::from_resources(&resources)?;
        Ok((
            SecurityConfig::from_resources(&resources, &topology)?,
            topology,
        ))
    }

    fn view<'a>(namespace: &'a str, labels: &'a BTreeMap<String, String>) -> ProxyView<'a> {
        ProxyView { namespace, labels }
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_owned(), app.to_owned())].into()
    }

    fn peer(namespace: &str, name: &str, body: &str) -> String {
        format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {body}\n---\n")
    }

    #[test]
    fn peer_authentication_narrowest_scope_wins_and_unset_inherits() {
        let web = labels("web");
        let (none, _) = config("").unwrap();
        assert_eq!(
            none.inbound_mode(&view("shop", &web), 8080),
            MtlsMode::Permissive
        );
        let text = peer("istio-system", "mesh", "{mtls: {mode: STRICT}}")
            + &peer("shop", "ns", "{mtls: {mode: UNSET}}")
            + &peer(
                "shop",
                "web",
                "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}, portLevelMtls: {9090: {mode: PERMISSIVE}, 7070: {}}}",
            );
        let (security, _) = config(&text).unwrap();
        assert_eq!(
            security.inbound_mode(&view("shop", &web), 8080),
            MtlsMode::Disable
        );
        assert_eq!(
            security.inbound_mode(&view("shop", &web), 9090),
            MtlsMode::Permissive
        );
        assert_eq!(
            security.inbound_mode(&view("shop", &web), 7070),
            MtlsMode::Disable,
            "an UNSET port inherits the workload's mode"
        );
        let other = labels("other");
        assert_eq!(
            security.inbound_mode(&view("shop", &other), 8080),
            MtlsMode::Strict,
            "UNSET namespace inherits the mesh's STRICT"
        );
        // A selector policy in the root namespace is not a workload policy.
        let root_selector = peer(
            "istio-system",
            "root-web",
            "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}",
        );
        let (security, _) = config(&root_selector).unwrap();
        assert_eq!(
            security.inbound_mode(&view("shop", &web), 8080),
            MtlsMode::Permissive
        );
        assert!(config(&peer("shop", "bad", "{mtls: {mode: SOMETIMES}}")).is_err());
    }

    #[test]
    fn strict_permissive_and_disable_give_istios_filter_chains() {
        let strict = inbound_chains(MtlsMode::Strict);
        assert_eq!(strict.len(), 1);
        assert_eq!(strict[0].0, json!({"transport_protocol": "tls"}));
        let tls = strict[0].1.as_ref().unwrap();
        assert_eq!(tls["typed_config"]["require_client_certificate"], true);
        let permissive = inbound_chains(MtlsMode::Permissive);
        assert_eq!(permissive.len(), 2);
        assert_eq!(permissive[0].0["application_protocols"][0], "istio");
        assert!(permissive[1].1.is_none());
        let disable = inbound_chains(MtlsMode::Disable);
        assert_eq!(
            disable,
            vec![(json!({"transport_protocol": "raw_buffer"}), None)]
        );
    }

    fn authz(namespace: &str, name: &str, body: &str) -> String {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {body}\n---\n")
    }

    #[test]
    fn authorization_policy_becomes_istios_rbac_config() {
        let text = authz(
            "shop",
            "web",
            r#"
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/order, "*-suffix"], notNamespaces: [evil]}}]
    to: [{operation: {methods: [GET], paths: ["/items/*", "/a/{*}/b"], ports: ["8080"], notHosts: ["*.internal"]}}]
    when: [{key: "request.auth.claims[groups]", values: [admin]}, {key: "request.headers[x-tenant]", notValues: ["t*"]}]
  - to: [{operation: {paths: [/healthz]}}]
"#,
        );
        let (security, _) = config(&text).unwrap();
        let web = labels("web");
        let filters =
            security.rbac_filters(&view("shop", &web), ListenerClass::SidecarInbound, &|p| {
                if p == 8080 {
                    15006
                } else {
                    p
                }
            });
        assert_eq!(filters.len(), 1);
        let rules = &filters[0]["typed_config"]["rules"];
        assert_eq!(rules["action"], "ALLOW");
        let rule0 = &rules["policies"]["ns[shop]-policy[web]-rule[0]"];
        let permission = &rule0["permissions"][0]["and_rules"]["rules"];
        assert_eq!(
            permission[0],
            json!({"not_rule": {"or_rules": {"rules": [{"header": {"name": ":authority", "string_match": {"suffix": ".internal", "ignore_case": true}}}]}}})
        );
        assert_eq!(
            permission[1]["or_rules"]["rules"][0],
            json!({"header": {"name": ":method", "string_match": {"exact": "GET"}}})
        );
        assert_eq!(
            permission[2]["or_rules"]["rules"][0],
            json!({"url_path": {"path": {"prefix": "/items/"}}})
        );
        assert_eq!(
            permission[2]["or_rules"]["rules"][1]["uri_template"]["typed_config"]["path_template"],
            "/a/*/b"
        );
        assert_eq!(
            permission[3],
            json!({"or_rules": {"rules": [{"destination_port": 15006}]}}),
            "the workload port is the local listener's port"
        );
        let principal = &rule0["principals"][0]["and_ids"]["ids"];
        assert_eq!(
            principal[0]["or_ids"]["ids"][0],
            json!({"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/shop/sa/order"}}})
        );
        assert_eq!(
            principal[0]["or_ids"]["ids"][1],
            json!({"authenticated": {"principal_name": {"safe_regex": {"regex": "spiffe://.*-suffix"}}}})
        );
        assert_eq!(
            principal[1],
            json!({"not_id": {"or_ids": {"ids": [{"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/evil/.*"}}}}]}}})
        );
        assert_eq!(
            principal[2]["metadata"]["path"],
            json!([{"key": "payload"}, {"key": "groups"}])
        );
        assert_eq!(
            principal[2]["metadata"]["value"]["or_match"]["value_matchers"][0],
            json!({"list_match": {"one_of": {"string_match": {"exact": "admin"}}}})
        );
        assert_eq!(
            principal[3],
            json!({"not_id": {"or_ids": {"ids": [{"header": {"name": "x-tenant", "string_match": {"prefix": "t"}}}]}}})
        );
        let rule1 = &rules["policies"]["ns[shop]-policy[web]-rule[1]"];
        assert_eq!(
            rule1["principals"][0],
            json!({"and_ids": {"ids": [{"any": true}]}})
        );
        // Outbound listeners never get RBAC; other workloads not this policy.
        assert!(security
            .rbac_filters(&view("shop", &web), ListenerClass::SidecarOutbound, &|p| p)
            .is_empty());
        assert!(security
            .rbac_filters(
                &view("shop", &labels("api")),
                ListenerClass::SidecarInbound,
                &|p| p
            )
            .is_empty());
    }

    #[test]
    fn request_principals_split_at_the_last_slash() {
        let text = authz(
            "shop",
            "rp",
            r#"{rules: [{from: [{source: {requestPrincipals: ["https://issuer.example/alice", "*"]}}]}]}"#,
        );
        let (security, _) = config(&text).unwrap();
        let web = labels("web");
        let filters =
            security.rbac_filters(&view("shop", &web), ListenerClass::SidecarInbound, &|p| p);
        let ids = &filters[0]["typed_config"]["rules"]["policies"]["ns[shop]-policy[rp]-rule[0]"]
            ["principals"][0]["and_ids"]["ids"][0]["or_ids"]["ids"];
        assert_eq!(
            ids[0]["and_ids"]["ids"][0]["metadata"]["value"]["string_match"],
            json!({"exact": "https://issuer.example"})
        );
        assert_eq!(
            ids[0]["and_ids"]["ids"][1]["metadata"]["value"]["string_match"],
            json!({"exact": "alice"})
        );
        assert_eq!(
            ids[1]["and_ids"]["ids"][1]["metadata"]["value"]["string_match"],
            json!({"safe_regex": {"regex": ".+"}})
        );
    }

    #[test]
    fn actions_order_dry_run_and_rules_that_match_nothing() {
        let text = authz("shop", "allow-nothing", "{}")
            + &authz("istio-system", "deny-mesh", r#"{action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}"#)
            + &authz("shop", "audit", r#"{action: AUDIT, rules: [{}]}"#)
            + "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: trial, namespace: shop, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: DENY, rules: [{}]}\n";
        let (security, _) = config(&text).unwrap();
        let web = labels("web");
        let filters =
            security.rbac_filters(&view("shop", &web), ListenerClass::SidecarInbound, &|p| p);
        let actions: Vec<&Value> = filters
            .iter()
            .map(|f| {
                f["typed_config"]
                    .get("rules")
                    .map_or(&f["typed_config"]["shadow_rules"]["action"], |r| {
                        &r["action"]
                    })
            })
            .collect();
        assert_eq!(actions, vec!["LOG", "DENY", "ALLOW"]);
        let deny = &filters[1]["typed_config"];
        assert!(
            deny["rules"]["policies"]["ns[istio-system]-policy[deny-mesh]-rule[0]"].is_object()
        );
        assert!(deny["shadow_rules"]["policies"]["ns[shop]-policy[trial]-rule[0]"].is_object());
        assert_eq!(deny["shadow_rules_stat_prefix"], "istio_dry_run_deny_");
        let allow_nothing = &filters[2]["typed_config"]["rules"]["policies"]
            ["ns[shop]-policy[allow-nothing]-rule[0]"];
        assert_eq!(
            allow_nothing["permissions"],
            json!([{"not_rule": {"any": true}}])
        );
    }

    #[test]
    fn invalid_values_skip_an_allow_rule_but_widen_a_deny_rule() {
        let text = authz(
            "shop",
            "allow",
            r#"{rules: [{to: [{operation: {ports: ["http"]}}]}]}"#,
        ) + &authz(
            "shop",
            "deny",
            r#"{action: DENY, rules: [{to: [{operation: {ports: ["http"], paths: [/x]}}]}]}"#,
        );
        let (security, _) = config(&text).unwrap();
        assert!(
            security.warnings.iter().any(|w| w
                .contains("skipped invalid rule ns[shop]-policy[allow]-rule[0]")
                && w.contains("invalid port http")),
            "{:?}",
            security.warnings
        );
        let web = labels("web");
        let filters =
            security.rbac_filters(&view("shop", &web), ListenerClass::SidecarInbound, &|p| p);
        assert_eq!(
            filters[0]["typed_config"]["rules"]["policies"]["ns[shop]-policy[deny]-rule[0]"]
                ["permissions"][0]["and_rules"]["rules"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            filters[1]["typed_config"]["rules"]["policies"],
            json!({}),
            "ALLOW with no valid rule allows nothing"
        );
    }

    #[test]
    fn custom_is_refused_and_target_refs_are_ignored_with_a_warning() {
        let err = config(&authz(
            "shop",
            "ext",
            "{action: CUSTOM, provider: {name: opa}, rules: [{}]}",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("CUSTOM (provider opa)"), "{err}");
        let (security, _) = config(&authz("shop", "gw", "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}], rules: [{}]}")).unwrap();
        assert!(security.warnings[0].contains("applies to no proxy"));
        let web = labels("web");
        assert!(security
            .rbac_filters(&view("shop", &web), ListenerClass::SidecarInbound, &|p| p)
            .is_empty());
    }

    const SERVICE_ENTRY: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: idp, namespace: shop}\nspec: {hosts: [idp.example], ports: [{number: 8443, name: http, protocol: HTTP}], resolution: STATIC, endpoints: [{address: 127.0.0.1}]}\n---\n";

    #[test]
    fn request_authentication_becomes_istios_jwt_authn() {
        let text = SERVICE_ENTRY.to_owned()
            + r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  jwtRules:
  - issuer: https://b.example
    jwksUri: http://idp.example:8443/keys
    fromHeaders: [{name: x-jwt, prefix: "Token "}]
    fromParams: [token]
    fromCookies: [session]
    outputPayloadToHeader: x-payload
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
  - issuer: https://a.example
    audiences: [web]
    jwks: '{"keys":[]}'
    forwardOriginalToken: true
"#;
        let (security, topology) = config(&text).unwrap();
        let web = labels("web");
        let filter = security
            .jwt_filter(
                &view("shop", &web),
                ListenerClass::SidecarInbound,
                &topology,
            )
            .unwrap()
            .unwrap();
        let jwt = &filter["typed_config"];
        let a = &jwt["providers"]["origins-0"];
        assert_eq!(a["issuer"], "https://a.example", "sorted by issuer");
        assert_eq!(a["forward"], true);
        assert_eq!(a["audiences"], json!(["web"]));
        assert_eq!(a["local_jwks"]["inline_string"], "{\"keys\":[]}");
        assert_eq!(a["payload_in_metadata"], "payload");
        assert_eq!(a["clear_route_cache"], false);
        let b = &jwt["providers"]["origins-1"];
        assert_eq!(
            b["remote_jwks"]["http_uri"]["cluster"],
            "outbound|8443||idp.example"
        );
        assert_eq!(b["remote_jwks"]["http_uri"]["timeout"], "5s");
        assert_eq!(
            b["from_headers"],
            json!([{"name": "x-jwt", "value_prefix": "Token "}])
        );
        assert_eq!(b["from_params"], json!(["token"]));
        assert_eq!(b["from_cookies"], json!(["session"]));
        assert_eq!(b["forward_payload_header"], "x-payload");
        assert_eq!(
            b["claim_to_headers"],
            json!([{"header_name": "x-sub", "claim_name": "sub"}])
        );
        let any = &jwt["rules"][0]["requires"]["requires_any"]["requirements"];
        assert_eq!(any[0], json!({"provider_name": "origins-0"}));
        assert_eq!(
            any[2]["requires_all"]["requirements"][1],
            json!({"requires_any": {"requirements": [{"provider_name": "origins-1"}, {"allow_missing": {}}]}})
        );
        assert!(security
            .jwt_filter(
                &view("shop", &web),
                ListenerClass::SidecarOutbound,
                &topology
            )
            .unwrap()
            .is_none());
        let unknown = text.replace("idp.example:8443", "other.example:8443");
        let err = config(&unknown).unwrap_err();
        assert!(
            format!("{err:#}").contains("no ServiceEntry declares other.example:8443"),
            "{err:#}"
        );
    }

    #[test]
    fn auto_mtls_unless_disabled_and_destination_rule_tls_modes() {
        let (security, topology) = config("").unwrap();
        let service = &topology.services[0];
        let endpoints = topology.endpoints(service);
        let mut cluster =
            json!({"load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {}}]}]}});
        let target = UpstreamTarget {
            service,
            port: 8080,
            subset: None,
            endpoints: &endpoints,
            all_endpoints: &endpoints,
            tls: None,
        };
        security.apply_upstream_tls(&mut cluster, &target).unwrap();
        let matches = &cluster["transport_socket_matches"];
        assert_eq!(matches[0]["match"], json!({"tlsMode": "istio"}));
        let tls = &matches[0]["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], "outbound_.8080_._.web.shop.svc.cluster.local");
        assert_eq!(
            tls["common_tls_context"]["combined_validation_context"]["default_validation_context"]
                ["match_subject_alt_names"],
            json!([{"exact": "spiffe://cluster.local/ns/shop/sa/web"}])
        );
        assert_eq!(
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"]
                ["filter_metadata"]["envoy.transport_socket_match"]["tlsMode"],
            "istio"
        );

        // A workload DISABLE drops the endpoint label: plaintext to it.
        let (security, _) = config(&peer(
            "shop",
            "web",
            "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}",
        ))
        .unwrap();
        let mut cluster =
            json!({"load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {}}]}]}});
        security.apply_upstream_tls(&mut cluster, &target).unwrap();
        assert!(
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
                .get("metadata")
                .is_none()
        );

        // A namespace DISABLE: no TLS at all.
        let (security, _) = config(&peer("shop", "ns", "{mtls: {mode: DISABLE}}")).unwrap();
        let mut cluster = json!({});
        security.apply_upstream_tls(&mut cluster, &target).unwrap();
        assert_eq!(cluster, json!({}));

        // DestinationRule tls.
        let (security, _) = config("").unwrap();
        for (mode, expect_socket) in [("DISABLE", false), ("ISTIO_MUTUAL", true), ("SIMPLE", true)]
        {
            let tls = ClientTlsSettings {
                mode: Some(mode.to_owned()),
                ..Default::default()
            };
            let mut cluster = json!({});
            security
                .apply_upstream_tls(
                    &mut cluster,
                    &UpstreamTarget {
                        tls: Some(&tls),
                        ..target
                    },
                )
                .unwrap();
            assert_eq!(
                cluster.get("transport_socket").is_some(),
                expect_socket,
                "{mode}"
            );
            assert!(cluster.get("transport_socket_matches").is_none(), "{mode}");
        }
        let mutual = ClientTlsSettings {
            mode: Some("MUTUAL".to_owned()),
            ..Default::default()
        };
        let err = security
            .apply_upstream_tls(
                &mut json!({}),
                &UpstreamTarget {
                    tls: Some(&mutual),
                    ..target
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("clientCertificate"), "{err}");
    }

    #[test]
    fn nested_claim_keys_follow_istio() {
        assert_eq!(nested_brackets("[a][b]").unwrap(), vec!["a", "b"]);
        assert_eq!(nested_brackets("[a.b]").unwrap(), vec!["a.b"]);
        assert!(nested_brackets("a").is_err());
        assert_eq!(
            cidr("10.0.0.0/8").unwrap(),
            json!({"address_prefix": "10.0.0.0", "prefix_len": 8})
        );
        assert_eq!(cidr("::1").unwrap()["prefix_len"], 128);
        assert!(cidr("10.0.0.0/33").is_err());
    }
}
