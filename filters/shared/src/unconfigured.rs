//! The one answer of every meshwasm filter (and of the combined module for a
//! root id it does not serve) while its plugin has no valid configuration.
//!
//! Envoy creates no stream for a plugin whose configuration it refused; should
//! one come anyway, the request is answered with a 500 problem+json (what
//! Envoy answers on that chain itself) rather than passed unfiltered. A root
//! context must never return `None` from `create_http_context`: the proxy-wasm
//! SDK panics on it, which aborts the VM and every filter in it.

use crate::problem::Problem;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

/// The response to a request while the plugin has no valid configuration.
pub fn problem() -> Problem {
    Problem::new(
        500,
        "plugin-unconfigured",
        "Plugin not configured",
        "this plugin has no valid configuration; the proxy log says why",
    )
}

/// Glue: the HTTP context a root context hands out while unconfigured.
pub fn http_context() -> Option<Box<dyn HttpContext>> {
    Some(Box::new(Unconfigured))
}

struct Unconfigured;

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        problem().send(&[]);
        Action::Pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_500_problem() {
        let body: serde_json::Value = serde_json::from_slice(&problem().body()).unwrap();
        assert_eq!(body["status"], 500);
        assert_eq!(body["type"], "urn:meshwasm:problem:plugin-unconfigured");
    }
}
