//! Test only (built by `make test-e2e`, never part of `dist/`): a filter
//! that traps its VM (wasm `unreachable`, which Envoy reports as a runtime
//! error) on any request carrying an `x-trap` header, and otherwise passes
//! the request on, answering with `x-trap-filter-served: <n>`, the number of
//! requests this VM has served since it started (a reloaded VM counts from 1
//! again). `integration/tests/vm_failure.rs` uses it to show what each
//! WasmPlugin `failStrategy` does on a crash.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::Cell;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(TrapRoot { served: Rc::new(Cell::new(0)) }));
}}

struct TrapRoot {
    served: Rc<Cell<u64>>,
}

impl Context for TrapRoot {}

impl RootContext for TrapRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Trap {
            served: Rc::clone(&self.served),
        }))
    }
}

struct Trap {
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
        self.set_http_response_header("x-trap-filter-served", Some(&self.served.get().to_string()));
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
