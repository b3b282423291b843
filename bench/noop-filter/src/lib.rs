//! The cheapest possible proxy-wasm HTTP filter: every callback keeps the
//! SDK's default (`Continue`), so its cost per request is only Envoy creating
//! the context and entering the VM. `make bench` reports it as the floor.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(NoopRoot));
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop))
    }
}

struct Noop;

impl Context for Noop {}

impl HttpContext for Noop {}
