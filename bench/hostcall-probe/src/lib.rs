//! Host-call price list: a proxy-wasm HTTP filter that performs one host
//! operation `count` times per request, so that
//! `(cost(count = 20) − cost(count = 1)) / 19` is the price of one call with
//! the per-filter floor cancelled out. `make bench` runs it only when asked
//! (`BENCH_PRICES=1`); see BENCHMARKS.md.
//!
//! Config (JSON): `{"op": "get_header", "count": 20}`. `op` is one of
//! [`Op`]'s snake_case names (required); `count` defaults to 1. Every op runs
//! in `on_http_request_headers`, except `get_property_response_code`, which
//! reads `response.code` in `on_log` as a telemetry filter does.

use meshwasm_shared::config::{self, ConfigError, Validate};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(ProbeRoot::default()));
}}

/// The host operation repeated per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `get_http_request_header("x-user")`, a header the request carries.
    GetHeader,
    /// `get_http_request_headers()`: the whole map copied into the VM.
    GetHeaders,
    /// `set_http_request_header("x-meshwasm-probe", "1")`.
    SetHeader,
    /// `get_property(["request", "path"])`.
    GetProperty,
    /// `get_property(["response", "code"])` in `on_log`.
    GetPropertyResponseCode,
    /// `set_property(["meshwasm.probe.state"], "allow")`: an Envoy filter-state write.
    SetProperty,
    /// `increment_metric` on a counter defined once in the root context.
    IncrementMetric,
    /// `define_metric` by name on every call (what an uncached id costs).
    DefineMetric,
    /// `get_shared_data("meshwasm.probe")`.
    SharedDataGet,
    /// `get_shared_data` then `set_shared_data` with the returned CAS: one pair per count.
    SharedDataSet,
    /// `log` at info (Envoy drops it when it runs at warning).
    LogInfo,
    /// WASI `random_get` of 16 bytes (through `getrandom`).
    Random,
    /// `get_current_time`.
    GetCurrentTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub op: Op,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// More than this many calls per request measures queueing, not a price.
pub const MAX_COUNT: u32 = 10_000;

impl Validate for ProbeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(ConfigError::new(
                "count",
                format!("must be between 1 and {MAX_COUNT}"),
            ));
        }
        Ok(())
    }
}

const HEADER: &str = "x-user";
const SET_HEADER: &str = "x-meshwasm-probe";
const STATE_KEY: &str = "meshwasm.probe.state";
const SHARED_KEY: &str = "meshwasm.probe";
const METRIC: &str = "meshwasm_probe_calls_total";

struct Probe {
    config: ProbeConfig,
    /// The counter `increment_metric` bumps, defined once in `on_configure`.
    counter: Option<u32>,
}

#[derive(Default)]
struct ProbeRoot {
    probe: Option<Rc<Probe>>,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = match config::parse::<ProbeConfig>(self.get_plugin_configuration().as_deref())
        {
            Ok(config) => config,
            Err(err) => {
                log::error!("{err}");
                return false;
            }
        };
        let counter = match config.op {
            Op::IncrementMetric => match hostcalls::define_metric(MetricType::Counter, METRIC) {
                Ok(id) => Some(id),
                Err(err) => {
                    log::error!("cannot define {METRIC}: {err:?}");
                    return false;
                }
            },
            _ => None,
        };
        if config.op == Op::SharedDataGet || config.op == Op::SharedDataSet {
            // A value to read (and a first CAS) before the first request.
            if let Err(err) = self.set_shared_data(SHARED_KEY, Some(b"0"), None) {
                log::error!("cannot seed shared data: {err:?}");
                return false;
            }
        }
        self.probe = Some(Rc::new(Probe { config, counter }));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let probe = self.probe.clone()?;
        Some(Box::new(ProbeRequest { probe }))
    }
}

struct ProbeRequest {
    probe: Rc<Probe>,
}

impl Context for ProbeRequest {}

impl HttpContext for ProbeRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.probe.config.op != Op::GetPropertyResponseCode {
            for _ in 0..self.probe.config.count {
                self.call_once();
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.probe.config.op == Op::GetPropertyResponseCode {
            for _ in 0..self.probe.config.count {
                std::hint::black_box(self.get_property(vec!["response", "code"]));
            }
        }
    }
}

impl ProbeRequest {
    /// One host operation; results go through `black_box` so that nothing
    /// is optimised away, and errors are ignored (a failing call would show
    /// up as a cheap price, which the variant's probe request guards against
    /// for the ops that change what the client sees).
    // The raw host calls are what this probe prices: none goes through
    // meshwasm_shared's staged-chain wrappers.
    #[allow(clippy::disallowed_methods)]
    fn call_once(&self) {
        match self.probe.config.op {
            Op::GetHeader => {
                std::hint::black_box(self.get_http_request_header(HEADER));
            }
            Op::GetHeaders => {
                std::hint::black_box(self.get_http_request_headers());
            }
            Op::SetHeader => self.set_http_request_header(SET_HEADER, Some("1")),
            Op::GetProperty => {
                std::hint::black_box(self.get_property(vec!["request", "path"]));
            }
            Op::SetProperty => self.set_property(vec![STATE_KEY], Some(b"allow")),
            Op::IncrementMetric => {
                if let Some(id) = self.probe.counter {
                    std::hint::black_box(hostcalls::increment_metric(id, 1)).ok();
                }
            }
            Op::DefineMetric => {
                std::hint::black_box(hostcalls::define_metric(MetricType::Counter, METRIC)).ok();
            }
            Op::SharedDataGet => {
                std::hint::black_box(self.get_shared_data(SHARED_KEY));
            }
            Op::SharedDataSet => {
                let (_, cas) = self.get_shared_data(SHARED_KEY);
                std::hint::black_box(self.set_shared_data(SHARED_KEY, Some(b"1"), cas)).ok();
            }
            Op::LogInfo => {
                std::hint::black_box(hostcalls::log(LogLevel::Info, "meshwasm probe")).ok();
            }
            Op::Random => {
                let mut bytes = [0u8; 16];
                std::hint::black_box(getrandom::fill(&mut bytes)).ok();
                std::hint::black_box(bytes);
            }
            Op::GetCurrentTime => {
                std::hint::black_box(self.get_current_time());
            }
            Op::GetPropertyResponseCode => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_op_and_count() {
        let config: ProbeConfig =
            config::parse(Some(br#"{"op":"get_header","count":20}"#.as_slice())).unwrap();
        assert_eq!(
            config,
            ProbeConfig {
                op: Op::GetHeader,
                count: 20
            }
        );
    }

    #[test]
    fn count_defaults_to_one() {
        let config: ProbeConfig = config::parse(Some(br#"{"op":"random"}"#.as_slice())).unwrap();
        assert_eq!(config.count, 1);
    }

    #[test]
    fn refuses_unknown_op_missing_op_and_zero_count() {
        let err = config::parse::<ProbeConfig>(Some(br#"{"op":"nope"}"#.as_slice())).unwrap_err();
        assert_eq!(err.field, "op");
        assert!(config::parse::<ProbeConfig>(None).is_err());
        let err = config::parse::<ProbeConfig>(Some(br#"{"op":"random","count":0}"#.as_slice()))
            .unwrap_err();
        assert_eq!(err.field, "count");
    }
}
