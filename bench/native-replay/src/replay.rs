//! The benchmark's variants and request (bench/run.py's), driven through the
//! module's exported entry points in the order Envoy calls them.

use crate::host::{self, HeaderMap, Host, Plugin, Stream};
use anyhow::{bail, ensure, Context as _};
use proxy_wasm::types::Action;
use serde::Deserialize as _;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The filters of the benchmark chain, in Istio's order (bench/run.py).
pub const CHAIN: [&str; 4] = ["authz", "routing", "telemetry", "circuit-breaker"];
/// Variants replayed, as bench/run.py names them.
pub const VARIANTS: [&str; 6] = [
    "authz",
    "routing",
    "telemetry",
    "circuit-breaker",
    "meshwasm-chain",
    "meshwasm-chain-staged",
];

/// bench/run.py's BENCH_AUTHZ_RULE: the manifest's rules guard /orders, the
/// benchmark's POST /charge needs one more ALLOW rule, evaluated last.
fn bench_authz_rule() -> Value {
    json!({"name": "bench-charge", "action": "ALLOW", "paths": ["/charge"], "request_principals": ["*"]})
}

/// The repository (for the manifests and demo keys read at run time).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(&root).unwrap_or(root)
}

/// `(pluginName, pluginConfig)` of the first WasmPlugin in
/// wasmplugin-manifests/wasmplugin-<filter>.yaml (bench/run.py's `manifest_plugin`).
fn manifest_plugin(repo: &Path, filter: &str) -> anyhow::Result<(String, Value)> {
    let path = repo.join(format!("wasmplugin-manifests/wasmplugin-{filter}.yaml"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let document: Value = serde_json::to_value(serde_yaml::Value::deserialize(document)?)?;
        if document.get("kind").and_then(Value::as_str) == Some("WasmPlugin") {
            let spec = document.get("spec").cloned().unwrap_or(Value::Null);
            let root_id = spec
                .get("pluginName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let config = spec
                .get("pluginConfig")
                .cloned()
                .unwrap_or_else(|| json!({}));
            return Ok((root_id.to_owned(), config));
        }
    }
    bail!("no WasmPlugin in {}", path.display())
}

/// The authz manifest's config with the demo JWKS inline instead of its
/// `jwks_uri`, plus the benchmark rule (bench/run.py's `authz_plugin`).
fn authz_plugin(repo: &Path) -> anyhow::Result<(String, Value)> {
    let jwks_path = repo.join("integration/demo-keys/demo-jwks.json");
    let jwks: Value = serde_json::from_str(
        &std::fs::read_to_string(&jwks_path)
            .with_context(|| format!("reading {}", jwks_path.display()))?,
    )?;
    let (root_id, mut config) = manifest_plugin(repo, "authz")?;
    if let Some(providers) = config.get_mut("providers").and_then(Value::as_array_mut) {
        for provider in providers.iter_mut().filter_map(Value::as_object_mut) {
            if provider
                .get("jwks_uri")
                .is_some_and(|uri| !uri.is_null() && uri != "")
            {
                provider.remove("jwks_uri");
                provider.remove("jwks_cluster");
                provider.insert("jwks".into(), jwks.clone());
            }
        }
    }
    let Some(object) = config.as_object_mut() else {
        bail!("the authz pluginConfig is not an object");
    };
    let rules = object.entry("rules").or_insert_with(|| json!([]));
    let Some(rules) = rules.as_array_mut() else {
        bail!("the authz pluginConfig's rules are not a list");
    };
    rules.push(bench_authz_rule());
    Ok((root_id, config))
}

/// `(root id, config)` of one filter as bench/run.py configures it.
fn filter_plugin(repo: &Path, filter: &str) -> anyhow::Result<(String, Value)> {
    if filter == "authz" {
        authz_plugin(repo)
    } else {
        manifest_plugin(repo, filter)
    }
}

/// A plugin as bench/run.py's `wasm_filter` gives it to Envoy: the config
/// as compact JSON with sorted keys (`serde_json::Map` is sorted).
fn plugin(name: &str, root_id: &str, config: &Value) -> anyhow::Result<Plugin> {
    Ok(Plugin {
        name: name.to_owned(),
        root_id: root_id.to_owned(),
        configuration: serde_json::to_vec(config)?,
    })
}

/// The plugins of a variant, in filter-chain order.
pub fn variant_plugins(repo: &Path, variant: &str) -> anyhow::Result<Vec<Plugin>> {
    match variant {
        "meshwasm-chain" => CHAIN
            .iter()
            .map(|filter| {
                let (root_id, config) = filter_plugin(repo, filter)?;
                plugin(filter, &root_id, &config)
            })
            .collect(),
        "meshwasm-chain-staged" => {
            let stages = CHAIN
                .iter()
                .map(|filter| {
                    let (root_id, config) = filter_plugin(repo, filter)?;
                    Ok(json!({"filter": root_id, "config": config}))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(vec![plugin(
                "stages",
                "stages",
                &json!({ "stages": stages }),
            )?])
        }
        filter if CHAIN.contains(&filter) => {
            let (root_id, config) = filter_plugin(repo, filter)?;
            Ok(vec![plugin(filter, &root_id, &config)?])
        }
        other => bail!("unknown variant `{other}`; one of {}", VARIANTS.join(", ")),
    }
}

/// bench/run.py's main token (`Tokens.main`): the demo RS256 key, subject
/// alice, claims user and tenant, valid for two hours.
pub fn demo_token() -> anyhow::Result<String> {
    let mut mint =
        mint_token::Mint::demo("alice")?.claims(json!({"user": "alice", "tenant": "acme"}))?;
    mint.expires_in = Duration::from_secs(2 * 3600);
    mint.sign()
}

/// The benchmark request's headers as Envoy hands them to filters (wrk's
/// `Host` is `:authority`).
pub fn request_headers(token: Option<&str>) -> HeaderMap {
    let mut headers: HeaderMap = [
        (":authority", "payment:8080"),
        (":method", "POST"),
        (":path", "/charge"),
        (":scheme", "http"),
        ("x-user", "alice"),
        ("x-tenant-id", "acme"),
        ("content-length", "0"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    if let Some(token) = token {
        headers.push(("authorization".into(), format!("Bearer {token}")));
    }
    headers
}

/// The direct response's headers and body (`200 ok`).
fn response_headers() -> HeaderMap {
    [
        (":status", "200"),
        ("content-length", "2"),
        ("content-type", "text/plain"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect()
}
const RESPONSE_BODY: &[u8] = b"ok";

/// An entry point through an opaque pointer, so that LTO cannot inline it
/// into the driver: callgrind must see each call to count it.
fn entry<F: Copy>(function: F) -> F {
    std::hint::black_box(function)
}

type Create = unsafe extern "C" fn(u32, u32);
type Start = unsafe extern "C" fn(u32, usize) -> bool;
/// Returns an `Action`, read as a plain integer.
type Headers = unsafe extern "C" fn(u32, usize, bool) -> u32;
type Log = unsafe extern "C" fn(u32);

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The local response a filter sent, if one did.
    pub local_response: Option<u32>,
    /// A filter paused the request headers (with no local response).
    pub paused: bool,
}

impl Outcome {
    pub fn passed(self) -> bool {
        self.local_response.is_none() && !self.paused
    }
}

/// One VM with the variant's plugins configured.
pub struct Replay {
    plugin_count: usize,
    root_contexts: Vec<u32>,
    next_context_id: u32,
    /// Stream context ids of the request in flight, per plugin.
    streams: Vec<u32>,
}

impl Replay {
    /// Loads the module and starts each plugin as Envoy does: a root
    /// context, `on_vm_start`, `on_configure`.
    pub fn start(plugins: Vec<Plugin>, log_level: u32) -> anyhow::Result<Self> {
        let plugin_count = plugins.len();
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        host::with(|h| *h = Host::new(plugins, u64::try_from(now).unwrap_or(u64::MAX), log_level));
        // `proxy_wasm::main!`'s initialiser (the SDK's logger and the root
        // context factory), once per VM before any callback.
        entry(meshwasm::_initialize as extern "C" fn())();
        let mut replay = Self {
            plugin_count,
            root_contexts: Vec::with_capacity(plugin_count),
            next_context_id: 1,
            streams: Vec::with_capacity(plugin_count),
        };
        for index in 0..plugin_count {
            let root = replay.new_context(index);
            replay.root_contexts.push(root);
            let size = host::with(|h| {
                h.enter(root);
                h.plugin_configuration_size(index)
            });
            // SAFETY (these and every entry point call below): the SDK's
            // exports, with the arguments Envoy passes.
            unsafe {
                entry(sdk::proxy_on_context_create as Create)(root, 0);
                ensure!(
                    entry(sdk::proxy_on_vm_start as Start)(root, 0),
                    "plugin {index}: on_vm_start failed"
                );
                ensure!(
                    entry(sdk::proxy_on_configure as Start)(root, size),
                    "plugin {index}: on_configure refused the configuration (the log above says why)"
                );
            }
        }
        Ok(replay)
    }

    fn new_context(&mut self, plugin: usize) -> u32 {
        let id = self.next_context_id;
        self.next_context_id += 1;
        host::with(|h| h.bind_context(id, plugin));
        id
    }

    /// One request through every plugin, as Envoy's filter manager drives a
    /// stream: contexts created, request headers in filter order until one
    /// stops them, response headers in reverse order through the filters that
    /// saw the request, then log and delete for each. No body, trailers or
    /// done callbacks: `make build` removes their exports
    /// (tools/trim-callbacks) and Envoy then does not call them.
    #[inline(never)]
    pub fn request(&mut self, request_headers: HeaderMap) -> Outcome {
        let create = entry(sdk::proxy_on_context_create as Create);
        let on_request_headers = entry(sdk::proxy_on_request_headers as Headers);
        let on_response_headers = entry(sdk::proxy_on_response_headers as Headers);
        let on_log = entry(sdk::proxy_on_log as Log);
        let on_delete = entry(sdk::proxy_on_delete as Log);

        let header_count = request_headers.len();
        host::with(|h| {
            h.stream = Stream::new(request_headers);
            h.advance_clock(1_000_000);
        });
        self.streams.clear();
        for plugin in 0..self.plugin_count {
            let root = self.root_contexts.get(plugin).copied().unwrap_or(0);
            let id = self.new_context(plugin);
            self.streams.push(id);
            host::with(|h| h.enter(id));
            unsafe { create(id, root) };
        }

        // Request headers (end of stream: POST with an empty body).
        let mut reached = 0;
        let mut paused = false;
        for &id in &self.streams {
            reached += 1;
            host::with(|h| h.enter(id));
            let action = unsafe { on_request_headers(id, header_count, true) };
            if host::with(|h| h.stream.local_response.is_some()) {
                break;
            }
            if action != Action::Continue as u32 {
                paused = true;
                break;
            }
        }

        // The response: the route's direct response, or the local reply.
        let local_response = host::with(|h| {
            if h.stream.local_response.is_none() {
                h.stream.response_headers = response_headers();
                h.stream.response_code = Some(200);
            } else {
                h.stream.response_headers = vec![(
                    ":status".into(),
                    h.stream.response_code.unwrap_or(0).to_string(),
                )];
            }
            h.stream.response_body = RESPONSE_BODY.to_vec();
            h.advance_clock(1_000_000);
            h.stream.local_response
        });
        let response_header_count = host::with(|h| h.stream.response_headers.len());
        let encoders = self.streams.get(..reached).unwrap_or_default();
        for &id in encoders.iter().rev() {
            host::with(|h| h.enter(id));
            unsafe { on_response_headers(id, response_header_count, false) };
        }

        for &id in &self.streams {
            host::with(|h| h.enter(id));
            unsafe { on_log(id) };
        }
        for &id in &self.streams {
            host::with(|h| h.enter(id));
            unsafe { on_delete(id) };
            host::with(|h| h.unbind_context(id));
        }
        Outcome {
            local_response,
            paused: paused && local_response.is_none(),
        }
    }
}

/// The SDK's exported entry points (`#[no_mangle]` in proxy_wasm's private
/// `dispatcher` module: declared here by symbol).
mod sdk {
    extern "C" {
        pub fn proxy_on_context_create(context_id: u32, root_context_id: u32);
        pub fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool;
        pub fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool;
        pub fn proxy_on_request_headers(
            context_id: u32,
            num_headers: usize,
            end_of_stream: bool,
        ) -> u32;
        pub fn proxy_on_response_headers(
            context_id: u32,
            num_headers: usize,
            end_of_stream: bool,
        ) -> u32;
        pub fn proxy_on_log(context_id: u32);
        pub fn proxy_on_delete(context_id: u32);
    }
}

/// The per-request entry points: callgrind counts the module inside them.
pub const REQUEST_ENTRY_POINTS: &[&str] = &[
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_response_headers",
    "proxy_on_log",
    "proxy_on_delete",
];
