//! Glue: whether Envoy keeps a wasm log line of a given level, so a filter
//! can skip building an expensive line (reads, JSON) that Envoy would drop.
//! Istio runs proxies at `warning` by default.

use proxy_wasm::types::LogLevel;

#[link(wasm_import_module = "env")]
extern "C" {
    // Read as a plain integer: Envoy answers 6 for `off`, which the SDK's
    // `LogLevel` cannot hold.
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
}

/// `true` when Envoy's current wasm log level lets `level` through (asked
/// on every call: the level can change at runtime through `/logging`); when
/// the host cannot tell, `true`.
pub fn enabled(level: LogLevel) -> bool {
    let mut current = 0u32;
    // SAFETY: the host writes one u32 through the pointer it is given.
    let status = unsafe { proxy_get_log_level(&mut current) };
    status != 0 || level as u32 >= current
}
