//! meshwasm authz filter (placeholder until its issue lands).

use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Placeholder) });
}}

struct Placeholder;

impl Context for Placeholder {}
impl RootContext for Placeholder {}
