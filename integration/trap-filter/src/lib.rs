//! Test only (built by `make test-e2e`, never part of `dist/`): a filter
//! that traps its VM (wasm `unreachable`, which Envoy reports as a runtime
//! error) on any request carrying an `x-trap` header, and otherwise passes
//! the request on, adding `x-trap-filter-served: <plugin name>=<n>` to the
//! answer, `n` being the requests this plugin has served since its VM started
//! (a reloaded VM counts from 1 again). `integration/tests/vm_failure.rs` uses it to show what each
//! WasmPlugin `failStrategy` does on a crash.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::Cell;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(TrapRoot { name: Rc::from(""), served: Rc::new(Cell::new(0)) }));
}}

struct TrapRoot {
    name: Rc<str>,
    served: Rc<Cell<u64>>,
}

impl Context for TrapRoot {}

impl RootContext for TrapRoot {
    fn on_configure(&mut self, _configuration_size: usize) -> bool {
        let name = self.get_property(vec!["plugin_name"]).unwrap_or_default();
        self.name = Rc::from(String::from_utf8_lossy(&name).as_ref());
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Trap {
            name: Rc::clone(&self.name),
            served: Rc::clone(&self.served),
        }))
    }
}

struct Trap {
    name: Rc<str>,
    served: Rc<Cell<u64>>,
}

impl Context for Trap {}

impl HttpContext for Trap {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header("x-trap").is_some() {
            trap();
        }
        self.served.set(self.served.get() + 1);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let served = format!("{}={}", self.name, self.served.get());
        self.add_http_response_header("x-trap-filter-served", &served);
        Action::Continue
    }
}

/// A wasm trap, as a bug in a filter would cause (an out-of-bounds access,
/// a panic under `panic = "abort"`).
fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}
