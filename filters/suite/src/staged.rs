//! A staged chain: one WasmPlugin (`pluginName: stages`) running several
//! filters, in order, inside one plugin context. Envoy then enters the VM
//! once per callback for the whole chain, and the stages share one read of
//! each header map and each other's filter state (`meshwasm_shared::stage`).
//!
//! Each stage keeps its own configuration schema, semantics and metrics: it
//! is the filter's own root and HTTP context, configured with the stage's
//! `config` as if that were its plugin's `pluginConfig`. The chain behaves as
//! the same filters as separate plugins in the same order:
//! - request headers go through the stages in order until one stops the
//!   request (a local reply, or authz waiting for a JWKS fetch);
//! - a stage that resumes a paused request hands it to the next stage, and
//!   Envoy's chain resumes only after the last one;
//! - response headers go through the stages in reverse order (Envoy's encoder
//!   order), local replies of any stage included; every stage logs.

use crate::Filter;
use meshwasm_shared::config::{ConfigError, Validate};
use meshwasm_shared::stage::{self, ConfigureScope, StreamScope};
use meshwasm_shared::unconfigured;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::time::{Duration, SystemTime};

/// The root id (`pluginName`) of a staged chain.
pub const ROOT_ID: &str = "stages";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    pub stages: Vec<StageConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// A filter's root id, as a separate plugin's `pluginName` names it.
    pub filter: String,
    /// The filter's own configuration, as its plugin's `pluginConfig`.
    #[serde(default)]
    pub config: Option<Box<RawValue>>,
}

impl ChainConfig {
    /// Each stage's filter and configuration bytes (none for no `config`).
    pub fn stages(&self) -> impl Iterator<Item = (Filter, Option<Vec<u8>>)> + '_ {
        self.stages.iter().filter_map(|stage| {
            let filter = Filter::from_root_id(&stage.filter)?;
            let config = stage
                .config
                .as_ref()
                .map(|raw| raw.get().as_bytes().to_vec());
            Some((filter, config))
        })
    }
}

impl Validate for ChainConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.stages.is_empty() {
            return Err(ConfigError::new(
                "stages",
                "a chain needs at least one stage",
            ));
        }
        for (index, stage) in self.stages.iter().enumerate() {
            if Filter::from_root_id(&stage.filter).is_none() {
                return Err(ConfigError::new(
                    format!("stages[{index}].filter"),
                    format!(
                        "unknown filter `{}`; one of {}",
                        stage.filter,
                        crate::FILTERS
                    ),
                ));
            }
        }
        Ok(())
    }
}

struct RootStage {
    filter: Filter,
    root: Box<dyn RootContext>,
    tick_period: Option<Duration>,
    next_tick: Option<SystemTime>,
}

/// The chain's root context: configures and ticks every stage's root.
#[derive(Default)]
pub struct StagedRoot {
    stages: Vec<RootStage>,
}

impl StagedRoot {
    fn configure(&mut self, config: &ChainConfig) -> bool {
        let mut stages = Vec::with_capacity(config.stages.len());
        for (index, (filter, configuration)) in config.stages().enumerate() {
            let mut root = filter.new_root_context();
            let size = configuration.as_ref().map_or(0, Vec::len);
            let scope = ConfigureScope {
                configuration,
                tick_period: None,
            };
            let (accepted, left) = stage::run_configure(scope, || root.on_configure(size));
            if !accepted {
                log::error!(
                    "stages: stage {index} ({}) refused its config (the line above says why)",
                    filter.root_id()
                );
                return false;
            }
            stages.push(RootStage {
                filter,
                root,
                tick_period: left.tick_period,
                next_tick: None,
            });
        }
        // One tick for the chain, as often as its most frequent stage asks;
        // each stage still ticks at its own period (on_tick).
        if let Some(period) = stages.iter().filter_map(|s| s.tick_period).min() {
            if let Err(status) = stage::set_tick_period(period) {
                log::warn!("stages: no tick ({status:?}); stages that need one will not tick");
            }
        }
        log::info!(
            "stages: configured {}",
            stages
                .iter()
                .map(|s| s.filter.root_id())
                .collect::<Vec<_>>()
                .join(" -> ")
        );
        self.stages = stages;
        true
    }
}

impl Context for StagedRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        // Each stage's root answers only the calls it dispatched.
        for stage in &mut self.stages {
            stage
                .root
                .on_http_call_response(token_id, num_headers, body_size, num_trailers);
        }
    }
}

impl RootContext for StagedRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = meshwasm_shared::config::plugin_configuration();
        match meshwasm_shared::config::parse::<ChainConfig>(raw.as_deref()) {
            Ok(config) => self.configure(&config),
            Err(err) => {
                log::error!("stages: {err}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let now = self.get_current_time();
        for stage in &mut self.stages {
            let Some(period) = stage.tick_period else {
                continue;
            };
            if stage.next_tick.is_some_and(|due| now < due) {
                continue;
            }
            stage.next_tick = now.checked_add(period);
            stage.root.on_tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.stages.is_empty() {
            return unconfigured::http_context();
        }
        let mut stages = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let Some(context) = stage.root.create_http_context(context_id) else {
                return unconfigured::http_context();
            };
            stages.push(context);
        }
        Some(Box::new(StagedStream {
            stages,
            scope: StreamScope::default(),
            paused_at: None,
            request_headers: (0, false),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One stream through the chain.
struct StagedStream {
    stages: Vec<Box<dyn HttpContext>>,
    scope: StreamScope,
    /// The stage that stopped the request, while it is stopped.
    paused_at: Option<usize>,
    /// The request-headers callback's arguments, for stages run on resume.
    request_headers: (usize, bool),
}

/// Runs the request headers through `stages` from `first` on; the stage that
/// stopped them, if one did.
fn request_headers_from(
    stages: &mut [Box<dyn HttpContext>],
    first: usize,
    (num_headers, end_of_stream): (usize, bool),
) -> Option<usize> {
    for (index, stage) in stages.iter_mut().enumerate().skip(first) {
        if stage.on_http_request_headers(num_headers, end_of_stream) == Action::Pause {
            return Some(index);
        }
    }
    None
}

impl Context for StagedStream {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        let Some(paused) = self.paused_at else {
            return;
        };
        let stages = &mut self.stages;
        stage::run_stream(&mut self.scope, || {
            if let Some(waiting) = stages.get_mut(paused) {
                waiting.on_http_call_response(token_id, num_headers, body_size, num_trailers);
            }
        });
        if !self.scope.take_resumed_request() {
            return;
        }
        let arguments = self.request_headers;
        let next = paused.saturating_add(1);
        self.paused_at = stage::run_stream(&mut self.scope, || {
            request_headers_from(stages, next, arguments)
        });
        if self.paused_at.is_none() {
            stage::resume_request();
        }
    }
}

impl HttpContext for StagedStream {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.request_headers = (num_headers, end_of_stream);
        let (stages, arguments) = (&mut self.stages, self.request_headers);
        self.paused_at = stage::run_stream(&mut self.scope, || {
            request_headers_from(stages, 0, arguments)
        });
        match self.paused_at {
            Some(_) => Action::Pause,
            None => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        let stages = &mut self.stages;
        stage::run_stream(&mut self.scope, || {
            let stopped = stages.iter_mut().rev().any(|stage| {
                stage.on_http_response_headers(num_headers, end_of_stream) == Action::Pause
            });
            if stopped {
                Action::Pause
            } else {
                Action::Continue
            }
        })
    }

    fn on_log(&mut self) {
        let stages = &mut self.stages;
        stage::run_stream(&mut self.scope, || {
            for stage in stages.iter_mut() {
                stage.on_log();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ChainConfig, ConfigError> {
        meshwasm_shared::config::parse(Some(json.as_bytes()))
    }

    #[test]
    fn stages_keep_their_order_and_their_exact_config_bytes() {
        let chain = parse(
            r#"{"stages":[{"filter":"authz","config":{"b":1, "a":[2]}},
                {"filter":"circuit-breaker"},{"filter":"telemetry","config":null}]}"#,
        )
        .unwrap();
        let stages: Vec<_> = chain.stages().collect();
        assert_eq!(
            stages,
            vec![
                (Filter::Authz, Some(br#"{"b":1, "a":[2]}"#.to_vec())),
                (Filter::CircuitBreaker, None),
                (Filter::Telemetry, None),
            ]
        );
    }

    #[test]
    fn a_bad_chain_names_the_field() {
        let cases = [
            (r#"{"stages":[]}"#, "stages"),
            (
                r#"{"stages":[{"filter":"routing"},{"filter":"ratelimit"}]}"#,
                "stages[1].filter",
            ),
            (
                r#"{"stages":[{"filter":"routing","conf":{}}]}"#,
                "stages[0].conf",
            ),
            (r#"{}"#, "."),
            (r#"{"stages":[{"config":{}}]}"#, "stages[0]"),
        ];
        for (json, field) in cases {
            let err = parse(json).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
        }
        let err = parse(r#"{"stages":[{"filter":"stages"}]}"#).unwrap_err();
        assert!(err.message.contains("unknown filter `stages`"), "{err}");
    }
}
