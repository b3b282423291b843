//! Several filters inside one plugin context: the combined module's staged
//! chain (`pluginName: stages`). Envoy then enters the VM once per callback
//! for the whole chain instead of once per filter, and what one stage read
//! from the host the next reads from here.
//!
//! The filters themselves do not know whether they run as a plugin of their
//! own or as a stage: the few host calls whose meaning changes inside a chain
//! go through this module (directly or through [`crate::host_headers`],
//! [`crate::filter_state`] and [`crate::config`]), and clippy's
//! `disallowed-methods` keeps the filters from calling the host directly.
//! Outside a chain every function here is the plain host call.
//!
//! Inside a chain, for the duration of one callback of one stream
//! ([`run_stream`]):
//! - the request and response header maps are read from Envoy at most once
//!   and kept up to date with the stages' own writes;
//! - filter state a stage wrote is read back without a host call;
//! - a stage that resumes the request after waiting (authz's JWKS fetch) does
//!   not resume Envoy's chain: the staged context runs the later stages first.
//!
//! While a stage's root context is configured ([`run_configure`]) it sees its
//! own part of the chain's configuration and its tick period is recorded for
//! the chain's root to honour.

use crate::host_headers::{self, HeaderWrite};
use proxy_wasm::types::MapType;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// A header map as read from Envoy in this callback, and the stages' writes
/// since, applied only when a stage reads the map again.
#[derive(Debug, Default)]
struct KeptMap {
    read: Option<Rc<Vec<u8>>>,
    writes: Vec<HeaderWrite>,
}

impl KeptMap {
    /// The map as Envoy would hand it over now, if it was read.
    fn current(&mut self) -> Option<Rc<Vec<u8>>> {
        let read = self.read.as_mut()?;
        if !self.writes.is_empty() {
            *read = Rc::new(host_headers::with_writes(read, &self.writes));
            self.writes.clear();
        }
        Some(Rc::clone(read))
    }
}

/// What the stages of one stream share; owned by the staged HTTP context and
/// installed for each of its callbacks.
#[derive(Debug, Default)]
pub struct StreamScope {
    /// The header maps (only within one callback: between callbacks other
    /// filters may change them).
    request_headers: KeptMap,
    response_headers: KeptMap,
    /// Filter state written by a stage of this stream (for the whole stream).
    filter_state: Vec<(String, Vec<u8>)>,
    resumed_request: bool,
}

impl StreamScope {
    /// Whether a stage asked to resume the request since the last call.
    pub fn take_resumed_request(&mut self) -> bool {
        std::mem::take(&mut self.resumed_request)
    }

    fn headers_mut(&mut self, map_type: MapType) -> Option<&mut KeptMap> {
        match map_type {
            MapType::HttpRequestHeaders => Some(&mut self.request_headers),
            MapType::HttpResponseHeaders => Some(&mut self.response_headers),
            _ => None,
        }
    }
}

/// What a stage's root context leaves while it is configured.
#[derive(Debug, Default)]
pub struct ConfigureScope {
    /// The stage's own `config` (Istio hands an empty `pluginConfig` over as
    /// nothing at all; a stage without `config` sees the same).
    pub configuration: Option<Vec<u8>>,
    /// The tick period the stage asked for.
    pub tick_period: Option<Duration>,
}

thread_local! {
    static STREAM: RefCell<Option<StreamScope>> = const { RefCell::new(None) };
    static CONFIGURE: RefCell<Option<ConfigureScope>> = const { RefCell::new(None) };
}

/// Runs one callback of a staged stream with `scope` installed.
pub fn run_stream<R>(scope: &mut StreamScope, callback: impl FnOnce() -> R) -> R {
    STREAM.with(|stream| *stream.borrow_mut() = Some(std::mem::take(scope)));
    let result = callback();
    if let Some(mut after) = STREAM.with(|stream| stream.borrow_mut().take()) {
        after.request_headers = KeptMap::default();
        after.response_headers = KeptMap::default();
        *scope = after;
    }
    result
}

/// Configures one stage with `scope` installed; returns the scope as the
/// stage left it.
pub fn run_configure(
    scope: ConfigureScope,
    configure: impl FnOnce() -> bool,
) -> (bool, ConfigureScope) {
    CONFIGURE.with(|current| *current.borrow_mut() = Some(scope));
    let accepted = configure();
    let scope = CONFIGURE.with(|current| current.borrow_mut().take());
    (accepted, scope.unwrap_or_default())
}

fn with_stream<R>(apply: impl FnOnce(&mut StreamScope) -> R) -> Option<R> {
    STREAM.with(|stream| stream.borrow_mut().as_mut().map(apply))
}

/// Inside a chain: the stage's own configuration (`Some(None)` for none).
pub(crate) fn configuration() -> Option<Option<Vec<u8>>> {
    CONFIGURE.with(|current| {
        current
            .borrow()
            .as_ref()
            .map(|scope| scope.configuration.clone())
    })
}

/// Glue: asks for `on_tick` every `period`; inside a chain the chain's root
/// ticks for the stage.
pub fn set_tick_period(period: Duration) -> Result<(), proxy_wasm::types::Status> {
    if record_tick_period(period) {
        return Ok(());
    }
    #[allow(clippy::disallowed_methods)] // the one place that may
    proxy_wasm::hostcalls::set_tick_period(period)
}

/// Keeps a configuring stage's tick period; `false` outside a chain.
fn record_tick_period(period: Duration) -> bool {
    CONFIGURE.with(|current| {
        current
            .borrow_mut()
            .as_mut()
            .map(|scope| scope.tick_period = Some(period))
            .is_some()
    })
}

/// Glue: lets the request continue after a stage paused it; inside a chain
/// the staged context continues with the next stage instead.
pub fn resume_request() {
    if record_resume() {
        return;
    }
    #[allow(clippy::disallowed_methods)] // the one place that may
    if let Err(status) = proxy_wasm::hostcalls::resume_http_request() {
        log::warn!("could not resume the request: {status:?}");
    }
}

/// Marks the staged stream as resumed; `false` outside a chain.
fn record_resume() -> bool {
    with_stream(|scope| scope.resumed_request = true).is_some()
}

/// The serialised header map `map_type` as the stages see it now: read from
/// the host once per callback inside a chain.
pub(crate) fn header_map(map_type: MapType, read: impl FnOnce() -> Rc<Vec<u8>>) -> Rc<Vec<u8>> {
    let kept = with_stream(|scope| scope.headers_mut(map_type).map(|kept| kept.current()));
    match kept {
        Some(Some(Some(map))) => map,
        Some(Some(None)) => {
            let map = read();
            with_stream(|scope| {
                if let Some(kept) = scope.headers_mut(map_type) {
                    kept.read = Some(Rc::clone(&map));
                }
            });
            map
        }
        _ => read(),
    }
}

/// Whether a staged chain's stream callback is running.
pub(crate) fn in_stream() -> bool {
    with_stream(|_| ()).is_some()
}

/// Notes a stage's header write for the kept map, if there is one (else the
/// next read goes to Envoy, which has the write).
pub(crate) fn note_header_write(map_type: MapType, write: HeaderWrite) {
    with_stream(|scope| {
        if let Some(kept) = scope
            .headers_mut(map_type)
            .filter(|kept| kept.read.is_some())
        {
            kept.writes.push(write);
        }
    });
}

/// Inside a chain: filter state a stage of this stream wrote under `key`.
pub(crate) fn filter_state(key: &str) -> Option<Vec<u8>> {
    with_stream(|scope| {
        scope
            .filter_state
            .iter()
            .find(|(written, _)| written == key)
            .map(|(_, value)| value.clone())
    })
    .flatten()
}

pub(crate) fn note_filter_state(key: &str, value: &[u8]) {
    with_stream(|scope| {
        match scope
            .filter_state
            .iter_mut()
            .find(|(written, _)| written == key)
        {
            Some((_, kept)) => value.clone_into(kept),
            None => scope.filter_state.push((key.to_owned(), value.to_vec())),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_chain_nothing_is_kept() {
        let mut reads = 0;
        for _ in 0..2 {
            header_map(MapType::HttpRequestHeaders, || {
                reads += 1;
                Rc::default()
            });
        }
        assert_eq!(reads, 2);
        note_filter_state("k", b"v");
        assert_eq!(filter_state("k"), None);
        assert_eq!(configuration(), None);
        assert!(!in_stream());
    }

    #[test]
    fn a_callback_reads_each_map_once_and_sees_its_own_writes() {
        let mut scope = StreamScope::default();
        let map = host_headers::encode_map(&[(":path", "/a"), ("x-user", "alice")]);
        let mut reads = 0;
        run_stream(&mut scope, || {
            for _ in 0..3 {
                header_map(MapType::HttpRequestHeaders, || {
                    reads += 1;
                    Rc::new(map.clone())
                });
            }
            note_header_write(
                MapType::HttpRequestHeaders,
                HeaderWrite::set("X-User", None),
            );
            note_header_write(
                MapType::HttpRequestHeaders,
                HeaderWrite::set(":path", Some("/b")),
            );
            let seen = header_map(MapType::HttpRequestHeaders, Rc::default);
            assert_eq!(
                host_headers::decode_map(&seen),
                vec![(":path".into(), "/b".into())]
            );
        });
        assert_eq!(reads, 1);
        // The next callback reads afresh; filter state stays for the stream.
        run_stream(&mut scope, || {
            note_filter_state("meshwasm.x", b"1");
            assert!(in_stream());
            let mut reads = 0;
            header_map(MapType::HttpRequestHeaders, || {
                reads += 1;
                Rc::default()
            });
            assert_eq!(reads, 1, "each callback reads afresh");
        });
        run_stream(&mut scope, || {
            assert_eq!(filter_state("meshwasm.x").as_deref(), Some(b"1".as_slice()));
            note_filter_state("meshwasm.x", b"2");
            assert_eq!(filter_state("meshwasm.x").as_deref(), Some(b"2".as_slice()));
        });
    }

    #[test]
    fn a_stage_resuming_inside_a_chain_only_marks_the_scope() {
        let mut scope = StreamScope::default();
        assert!(!record_resume());
        run_stream(&mut scope, || assert!(record_resume()));
        assert!(scope.take_resumed_request());
        assert!(!scope.take_resumed_request());
    }

    #[test]
    fn a_configured_stage_sees_its_own_configuration_and_leaves_its_tick() {
        let scope = ConfigureScope {
            configuration: Some(b"{\"a\":1}".to_vec()),
            tick_period: None,
        };
        let (accepted, left) = run_configure(scope, || {
            assert_eq!(configuration(), Some(Some(b"{\"a\":1}".to_vec())));
            record_tick_period(Duration::from_secs(5))
        });
        assert!(accepted);
        assert_eq!(left.tick_period, Some(Duration::from_secs(5)));
        assert_eq!(configuration(), None);
    }
}
