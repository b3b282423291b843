//! meshwasm in one module: the four filters share one V8 VM per Envoy thread
//! instead of one VM per filter per thread. Each WasmPlugin picks its filter
//! by `pluginName`, which Istio passes to Envoy as the plugin's root id, or
//! runs several of them as the ordered stages of one plugin
//! (`pluginName: stages`, [`staged`]).

pub mod staged;

use meshwasm_shared::unconfigured;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

/// The filters this module serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Authz,
    Routing,
    CircuitBreaker,
    Telemetry,
}

/// The filters' root ids (`pluginName`s, stage names), as shown in errors.
pub const FILTERS: &str = "authz, routing, circuit_breaker (or circuit-breaker), telemetry";

impl Filter {
    pub fn from_root_id(root_id: &str) -> Option<Self> {
        match root_id {
            "authz" => Some(Self::Authz),
            "routing" => Some(Self::Routing),
            "circuit_breaker" | "circuit-breaker" => Some(Self::CircuitBreaker),
            "telemetry" => Some(Self::Telemetry),
            _ => None,
        }
    }

    /// The filter's root id, as logs name it.
    pub fn root_id(self) -> &'static str {
        match self {
            Self::Authz => "authz",
            Self::Routing => "routing",
            Self::CircuitBreaker => "circuit_breaker",
            Self::Telemetry => "telemetry",
        }
    }

    fn new_root_context(self) -> Box<dyn RootContext> {
        match self {
            Self::Authz => meshwasm_authz::new_root_context(),
            Self::Routing => meshwasm_routing::new_root_context(),
            Self::CircuitBreaker => meshwasm_circuit_breaker::new_root_context(),
            Self::Telemetry => meshwasm_telemetry::new_root_context(),
        }
    }
}

/// The root context for a plugin with this root id; an unknown one refuses
/// its configuration so Envoy applies the plugin's fail policy.
pub fn new_root_context(root_id: &str) -> Box<dyn RootContext> {
    if root_id == staged::ROOT_ID {
        return Box::<staged::StagedRoot>::default();
    }
    match Filter::from_root_id(root_id) {
        Some(filter) => filter.new_root_context(),
        None => Box::new(UnknownRoot {
            root_id: root_id.to_owned(),
        }),
    }
}

/// Glue: the root id of the plugin whose root context Envoy is creating.
fn plugin_root_id() -> String {
    match proxy_wasm::hostcalls::get_property(vec!["plugin_root_id"]) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    }
}

struct UnknownRoot {
    root_id: String,
}

impl Context for UnknownRoot {}

impl RootContext for UnknownRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        log::error!(
            "meshwasm: unknown root id `{}` (the WasmPlugin's pluginName); this module serves {FILTERS}, and `{}` for several of them as stages",
            self.root_id,
            staged::ROOT_ID
        );
        false
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        unconfigured::http_context()
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

proxy_wasm::main! {{
    // Once per VM: the SDK's logger and panic hook, shared by every filter.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| new_root_context(&plugin_root_id()));
}}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_ids_name_the_filters() {
        assert_eq!(Filter::from_root_id("authz"), Some(Filter::Authz));
        assert_eq!(Filter::from_root_id("routing"), Some(Filter::Routing));
        assert_eq!(Filter::from_root_id("telemetry"), Some(Filter::Telemetry));
        for name in ["circuit_breaker", "circuit-breaker"] {
            assert_eq!(Filter::from_root_id(name), Some(Filter::CircuitBreaker));
        }
    }

    #[test]
    fn unknown_or_empty_root_id_is_no_filter() {
        for name in ["", "Authz", "auth", "circuitbreaker", "telemetry "] {
            assert_eq!(Filter::from_root_id(name), None, "{name:?}");
        }
    }

    #[test]
    fn accepted_names_are_listed_in_errors() {
        for name in [
            "authz",
            "routing",
            "circuit_breaker",
            "circuit-breaker",
            "telemetry",
        ] {
            assert!(FILTERS.contains(name), "{name}");
            assert!(Filter::from_root_id(name).is_some(), "{name}");
        }
    }
}
