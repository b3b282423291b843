//! The fake proxy-wasm host: the `proxy_*` functions the SDK imports, defined
//! here as plain native functions, over one thread-local [`Host`].
//!
//! It answers what the filters of the benchmark request ask, the way Envoy
//! encodes it (`source/extensions/common/wasm/context.cc`), and records what
//! the replay must check (local responses, calls it never expects). Every
//! exported function is `#[inline(never)]` and called by its symbol, so that
//! callgrind can tell host code from module code (see `report`).

// The imports' signatures are the ABI's: raw pointers the SDK passes (which
// the host trusts, as Envoy trusts the module's memory bounds) and, for the
// calls that carry a whole request, many arguments.
#![allow(clippy::missing_safety_doc, clippy::too_many_arguments)]

use proxy_wasm::types::{BufferType, MapType, Status};
use std::cell::RefCell;
use std::collections::HashMap;

/// Envoy's log level as a proxy-wasm level (`proxy_get_log_level`):
/// `warning` (3) unless told, as bench/run.py and Istio run Envoy. Lines
/// below it are dropped by the host, and telemetry builds no access-log line.
pub fn log_level_from_name(name: &str) -> Option<u32> {
    match name {
        "trace" => Some(0),
        "debug" => Some(1),
        "info" => Some(2),
        "warning" | "warn" => Some(3),
        "error" => Some(4),
        "critical" => Some(5),
        _ => None,
    }
}

/// Answers of the stream properties the filters read.
pub const CLUSTER_NAME: &str = "outbound|8080||payment.default.svc.cluster.local";
pub const UPSTREAM_ADDRESS: &str = "10.0.0.7:8080";
/// `envoy.config.core.v3.TrafficDirection.OUTBOUND`.
pub const LISTENER_DIRECTION_OUTBOUND: i64 = 2;

pub type HeaderMap = Vec<(String, String)>;

/// One plugin (an Envoy wasm filter) of the VM.
#[derive(Debug, Clone)]
pub struct Plugin {
    pub name: String,
    pub root_id: String,
    pub configuration: Vec<u8>,
}

/// What Envoy knows of the stream being replayed.
#[derive(Debug, Default)]
pub struct Stream {
    pub request_headers: HeaderMap,
    pub response_headers: HeaderMap,
    pub response_body: Vec<u8>,
    /// `response.code`: set once the response (or a local reply) exists.
    pub response_code: Option<u64>,
    /// The status of the local response a filter sent, if any.
    pub local_response: Option<u32>,
    /// `proxy_continue_stream` calls (a paused request resumed).
    pub resumes: u32,
    /// Filter state (`set_property` of one-segment paths, e.g. `meshwasm.*`).
    filter_state: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Stream {
    pub fn new(request_headers: HeaderMap) -> Self {
        Self {
            request_headers,
            ..Self::default()
        }
    }

    fn map(&self, map_type: u32) -> Option<&HeaderMap> {
        match map_type {
            t if t == MapType::HttpRequestHeaders as u32 => Some(&self.request_headers),
            t if t == MapType::HttpResponseHeaders as u32 => Some(&self.response_headers),
            _ => None,
        }
    }

    fn map_mut(&mut self, map_type: u32) -> Option<&mut HeaderMap> {
        match map_type {
            t if t == MapType::HttpRequestHeaders as u32 => Some(&mut self.request_headers),
            t if t == MapType::HttpResponseHeaders as u32 => Some(&mut self.response_headers),
            _ => None,
        }
    }

    /// Bytes on the wire of a header block (`name: value\r\n` each, then `\r\n`),
    /// as Envoy's `request.total_size`/`response.total_size` count them.
    fn wire_size(headers: &HeaderMap) -> i64 {
        let bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        i64::try_from(bytes + 2).unwrap_or(i64::MAX)
    }
}

/// Envoy's shared data: a value and a CAS per key. A set with a non-zero CAS
/// fails on a key whose CAS moved on; every successful set gets a new CAS
/// (proxy-wasm-cpp-host's `SharedData::set`).
#[derive(Debug, Default)]
pub struct SharedData {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    last_cas: u32,
}

impl SharedData {
    pub fn get(&self, key: &[u8]) -> Option<(&[u8], u32)> {
        self.entries
            .get(key)
            .map(|(value, cas)| (value.as_slice(), *cas))
    }

    pub fn set(&mut self, key: &[u8], value: &[u8], cas: u32) -> Status {
        self.last_cas = self.last_cas.wrapping_add(1).max(1);
        let next_cas = self.last_cas;
        match self.entries.get_mut(key) {
            Some((_, current)) if cas != 0 && cas != *current => Status::CasMismatch,
            Some(entry) => {
                entry.0.clear();
                entry.0.extend_from_slice(value);
                entry.1 = next_cas;
                Status::Ok
            }
            None => {
                self.entries
                    .insert(key.to_vec(), (value.to_vec(), next_cas));
                Status::Ok
            }
        }
    }
}

/// The host's whole state, for one VM.
#[derive(Debug, Default)]
pub struct Host {
    plugins: Vec<Plugin>,
    /// Which plugin each live context (root or stream) belongs to.
    context_plugin: HashMap<u32, usize>,
    /// The context whose callback runs (Envoy's effective context).
    current_context: u32,
    pub stream: Stream,
    shared_data: SharedData,
    metrics: Vec<i64>,
    metric_ids: HashMap<String, u32>,
    clock_nanos: u64,
    log_level: u32,
    /// Calls this replay never expects (an HTTP call, a body rewrite, …).
    pub unexpected: Vec<String>,
    /// Log lines at or above Envoy's level (warnings and errors).
    pub kept_log_lines: u32,
    /// Reused serialisation buffer (a header map, an integer property).
    scratch: Vec<u8>,
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

/// Runs `f` on the host state.
pub fn with<R>(f: impl FnOnce(&mut Host) -> R) -> R {
    HOST.with_borrow_mut(f)
}

impl Host {
    pub fn new(plugins: Vec<Plugin>, clock_nanos: u64, log_level: u32) -> Self {
        Self {
            plugins,
            clock_nanos,
            log_level,
            ..Self::default()
        }
    }

    pub fn bind_context(&mut self, context_id: u32, plugin: usize) {
        self.context_plugin.insert(context_id, plugin);
    }

    pub fn unbind_context(&mut self, context_id: u32) {
        self.context_plugin.remove(&context_id);
    }

    /// Envoy makes `context_id` the effective context before each callback.
    pub fn enter(&mut self, context_id: u32) {
        self.current_context = context_id;
    }

    pub fn advance_clock(&mut self, nanos: u64) {
        self.clock_nanos = self.clock_nanos.saturating_add(nanos);
    }

    pub fn plugin_configuration_size(&self, plugin: usize) -> usize {
        self.plugins
            .get(plugin)
            .map_or(0, |p| p.configuration.len())
    }

    fn plugin(&self) -> Option<&Plugin> {
        self.context_plugin
            .get(&self.current_context)
            .and_then(|&index| self.plugins.get(index))
    }

    fn unexpected_call(&mut self, what: &str) -> Status {
        self.unexpected.push(what.to_owned());
        Status::InternalFailure
    }

    /// A property as Envoy serialises it: strings as their bytes, integers as
    /// 8 little-endian bytes; a one-segment path may name filter state.
    fn property(&mut self, path: &[u8]) -> Option<&[u8]> {
        let integer = |scratch: &mut Vec<u8>, value: i64| {
            scratch.clear();
            scratch.extend_from_slice(&value.to_le_bytes());
        };
        match path {
            b"plugin_root_id" => return self.plugin().map(|p| p.root_id.as_bytes()),
            b"plugin_name" => return self.plugin().map(|p| p.name.as_bytes()),
            b"xds\0cluster_name" => return Some(CLUSTER_NAME.as_bytes()),
            b"upstream\0address" => return Some(UPSTREAM_ADDRESS.as_bytes()),
            b"response\0code_details" => return Some(b"via_upstream"),
            b"xds\0listener_direction" => integer(&mut self.scratch, LISTENER_DIRECTION_OUTBOUND),
            b"request\0total_size" => integer(
                &mut self.scratch,
                Stream::wire_size(&self.stream.request_headers),
            ),
            b"response\0total_size" => {
                let body = i64::try_from(self.stream.response_body.len()).unwrap_or(0);
                let headers = Stream::wire_size(&self.stream.response_headers);
                integer(&mut self.scratch, headers + body);
            }
            b"response\0code" => {
                let code = i64::try_from(self.stream.response_code?).unwrap_or(0);
                integer(&mut self.scratch, code);
            }
            b"response\0flags" => integer(&mut self.scratch, 0),
            _ => {
                return self
                    .stream
                    .filter_state
                    .iter()
                    .find(|(key, _)| key == path)
                    .map(|(_, value)| value.as_slice())
            }
        }
        Some(&self.scratch)
    }
}

/// Header-map serialisation as the SDK decodes it: a `u32` pair count, each
/// pair's name and value lengths (`u32`), then each name and value followed
/// by a NUL; all integers little endian.
pub fn serialize_map(pairs: &HeaderMap, out: &mut Vec<u8>) {
    let length = |text: &str| u32::try_from(text.len()).unwrap_or(u32::MAX).to_le_bytes();
    out.clear();
    out.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&length(name));
        out.extend_from_slice(&length(value));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
}

extern "C" {
    /// The SDK's allocator export. Envoy allocates every buffer it returns to
    /// the module through it; the SDK then owns the buffer as a `Vec<u8>`.
    fn proxy_on_memory_allocate(size: usize) -> *mut u8;
}

/// Hands `bytes` to the module in a buffer from the module's own allocator.
///
/// # Safety
/// Both return pointers must be writable.
unsafe fn hand_over(bytes: &[u8], return_data: *mut *mut u8, return_size: *mut usize) {
    // Called through an opaque pointer: with LTO it would be inlined here,
    // and callgrind would count the module's allocation as host code.
    let allocate: unsafe extern "C" fn(usize) -> *mut u8 =
        std::hint::black_box(proxy_on_memory_allocate);
    let data = allocate(bytes.len());
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len());
    *return_data = data;
    *return_size = bytes.len();
}

/// # Safety
/// `data` must point to `size` readable bytes (or be null with `size` 0).
unsafe fn bytes_at<'a>(data: *const u8, size: usize) -> &'a [u8] {
    if data.is_null() || size == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(data, size)
    }
}

/// # Safety
/// As [`bytes_at`]; the SDK passes `&str`s.
unsafe fn text_at<'a>(data: *const u8, size: usize) -> &'a str {
    std::str::from_utf8(bytes_at(data, size)).unwrap_or("")
}

// The imports, in hostcalls.rs order. Envoy's statuses where it matters:
// `NotFound` for a missing property, header or shared-data key.

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_log(
    level: u32,
    message_data: *const u8,
    message_size: usize,
) -> Status {
    // Envoy drops lines below its level; warnings and errors are printed
    // (a configuration refused says why), kept lines at other levels counted.
    let (kept, plugin) = with(|host| {
        let kept = level >= host.log_level;
        host.kept_log_lines += u32::from(kept);
        (
            kept,
            host.plugin().map_or_else(String::new, |p| p.name.clone()),
        )
    });
    if kept && level >= 3 {
        let message = String::from_utf8_lossy(bytes_at(message_data, message_size));
        eprintln!("[wasm log {level}] {plugin}: {message}");
    }
    Status::Ok
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_get_log_level(return_level: *mut u32) -> Status {
    *return_level = with(|host| host.log_level);
    Status::Ok
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> Status {
    *return_time = with(|host| host.clock_nanos);
    Status::Ok
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_set_tick_period_milliseconds(_period: u32) -> Status {
    // Ticks are timers, not part of a request: the replay never fires them.
    Status::Ok
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_get_buffer_bytes(
    buffer_type: u32,
    start: usize,
    max_size: usize,
    return_buffer_data: *mut *mut u8,
    return_buffer_size: *mut usize,
) -> Status {
    with(|host| {
        let buffer = match buffer_type {
            t if t == BufferType::PluginConfiguration as u32 => {
                host.plugin().map(|p| p.configuration.as_slice())
            }
            t if t == BufferType::HttpResponseBody as u32 => {
                Some(host.stream.response_body.as_slice())
            }
            _ => None,
        };
        let Some(buffer) = buffer else {
            return Status::NotFound;
        };
        let end = start.saturating_add(max_size).min(buffer.len());
        hand_over(
            buffer.get(start..end).unwrap_or(&[]),
            return_buffer_data,
            return_buffer_size,
        );
        Status::Ok
    })
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_set_buffer_bytes(
    _: u32,
    _: usize,
    _: usize,
    _: *const u8,
    _: usize,
) -> Status {
    with(|host| host.unexpected_call("proxy_set_buffer_bytes"))
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_get_header_map_pairs(
    map_type: u32,
    return_map_data: *mut *mut u8,
    return_map_size: *mut usize,
) -> Status {
    with(|host| {
        let Some(map) = host.stream.map(map_type) else {
            return Status::NotFound;
        };
        serialize_map(map, &mut host.scratch);
        hand_over(&host.scratch, return_map_data, return_map_size);
        Status::Ok
    })
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_set_header_map_pairs(_: u32, _: *const u8, _: usize) -> Status {
    with(|host| host.unexpected_call("proxy_set_header_map_pairs"))
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_get_header_map_value(
    map_type: u32,
    key_data: *const u8,
    key_size: usize,
    return_value_data: *mut *mut u8,
    return_value_size: *mut usize,
) -> Status {
    let key = text_at(key_data, key_size);
    with(|host| {
        let found = host
            .stream
            .map(map_type)
            .and_then(|map| map.iter().find(|(name, _)| name.eq_ignore_ascii_case(key)));
        match found {
            Some((_, value)) => {
                hand_over(value.as_bytes(), return_value_data, return_value_size);
                Status::Ok
            }
            None => Status::NotFound,
        }
    })
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_remove_header_map_value(
    map_type: u32,
    key_data: *const u8,
    key_size: usize,
) -> Status {
    let key = text_at(key_data, key_size);
    edit_map(map_type, |map| {
        map.retain(|(name, _)| !name.eq_ignore_ascii_case(key))
    })
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_replace_header_map_value(
    map_type: u32,
    key_data: *const u8,
    key_size: usize,
    value_data: *const u8,
    value_size: usize,
) -> Status {
    let key = text_at(key_data, key_size);
    let value = text_at(value_data, value_size);
    edit_map(map_type, |map| {
        // Envoy's setCopy: the first entry takes the value, the others go.
        let mut seen = false;
        map.retain_mut(|(name, old)| {
            if !name.eq_ignore_ascii_case(key) {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            value.clone_into(old);
            true
        });
        if !seen {
            map.push((key.to_ascii_lowercase(), value.to_owned()));
        }
    })
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_add_header_map_value(
    map_type: u32,
    key_data: *const u8,
    key_size: usize,
    value_data: *const u8,
    value_size: usize,
) -> Status {
    let key = text_at(key_data, key_size);
    let value = text_at(value_data, value_size);
    edit_map(map_type, |map| {
        map.push((key.to_ascii_lowercase(), value.to_owned()))
    })
}

/// Applies `edit` to the stream's header map `map_type`; NotFound when the
/// stream has no such map.
fn edit_map(map_type: u32, edit: impl FnOnce(&mut HeaderMap)) -> Status {
    with(|host| match host.stream.map_mut(map_type) {
        Some(map) => {
            edit(map);
            Status::Ok
        }
        None => Status::NotFound,
    })
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_get_property(
    path_data: *const u8,
    path_size: usize,
    return_value_data: *mut *mut u8,
    return_value_size: *mut usize,
) -> Status {
    let path = bytes_at(path_data, path_size);
    with(|host| match host.property(path) {
        Some(value) => {
            hand_over(value, return_value_data, return_value_size);
            Status::Ok
        }
        None => Status::NotFound,
    })
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_set_property(
    path_data: *const u8,
    path_size: usize,
    value_data: *const u8,
    value_size: usize,
) -> Status {
    let path = bytes_at(path_data, path_size);
    let value = bytes_at(value_data, value_size);
    with(|host| {
        let state = &mut host.stream.filter_state;
        match state.iter_mut().find(|(key, _)| key == path) {
            Some((_, old)) => value.clone_into(old),
            None => state.push((path.to_vec(), value.to_vec())),
        }
        Status::Ok
    })
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_get_shared_data(
    key_data: *const u8,
    key_size: usize,
    return_value_data: *mut *mut u8,
    return_value_size: *mut usize,
    return_cas: *mut u32,
) -> Status {
    let key = bytes_at(key_data, key_size);
    with(|host| match host.shared_data.get(key) {
        Some((value, cas)) => {
            hand_over(value, return_value_data, return_value_size);
            *return_cas = cas;
            Status::Ok
        }
        None => Status::NotFound,
    })
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_set_shared_data(
    key_data: *const u8,
    key_size: usize,
    value_data: *const u8,
    value_size: usize,
    cas: u32,
) -> Status {
    let key = bytes_at(key_data, key_size);
    let value = bytes_at(value_data, value_size);
    with(|host| host.shared_data.set(key, value, cas))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_register_shared_queue(_: *const u8, _: usize, _: *mut u32) -> Status {
    with(|host| host.unexpected_call("proxy_register_shared_queue"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_resolve_shared_queue(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *mut u32,
) -> Status {
    with(|host| host.unexpected_call("proxy_resolve_shared_queue"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_dequeue_shared_queue(_: u32, _: *mut *mut u8, _: *mut usize) -> Status {
    with(|host| host.unexpected_call("proxy_dequeue_shared_queue"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_enqueue_shared_queue(_: u32, _: *const u8, _: usize) -> Status {
    with(|host| host.unexpected_call("proxy_enqueue_shared_queue"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_continue_stream(_stream_type: u32) -> Status {
    with(|host| host.stream.resumes += 1);
    Status::Ok
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_close_stream(_: u32) -> Status {
    with(|host| host.unexpected_call("proxy_close_stream"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_send_local_response(
    status_code: u32,
    _details_data: *const u8,
    _details_size: usize,
    _body_data: *const u8,
    _body_size: usize,
    _headers_data: *const u8,
    _headers_size: usize,
    _grpc_status: i32,
) -> Status {
    with(|host| {
        host.stream.local_response = Some(status_code);
        host.stream.response_code = Some(u64::from(status_code));
    });
    Status::Ok
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_http_call(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: u32,
    _: *mut u32,
) -> Status {
    // Inline JWKS: authz never fetches keys in this replay.
    with(|host| host.unexpected_call("proxy_http_call"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_grpc_call(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: u32,
    _: *mut u32,
) -> Status {
    with(|host| host.unexpected_call("proxy_grpc_call"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_grpc_stream(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *mut u32,
) -> Status {
    with(|host| host.unexpected_call("proxy_grpc_stream"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_grpc_send(_: u32, _: *const u8, _: usize, _: bool) -> Status {
    with(|host| host.unexpected_call("proxy_grpc_send"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_grpc_cancel(_: u32) -> Status {
    with(|host| host.unexpected_call("proxy_grpc_cancel"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_grpc_close(_: u32) -> Status {
    with(|host| host.unexpected_call("proxy_grpc_close"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_get_status(_: *mut u32, _: *mut *mut u8, _: *mut usize) -> Status {
    with(|host| host.unexpected_call("proxy_get_status"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_set_effective_context(context_id: u32) -> Status {
    with(|host| host.enter(context_id));
    Status::Ok
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_call_foreign_function(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *mut *mut u8,
    _: *mut usize,
) -> Status {
    with(|host| host.unexpected_call("proxy_call_foreign_function"))
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_done() -> Status {
    with(|host| host.unexpected_call("proxy_done"))
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_define_metric(
    _metric_type: u32,
    name_data: *const u8,
    name_size: usize,
    return_id: *mut u32,
) -> Status {
    let name = text_at(name_data, name_size);
    *return_id = with(|host| {
        if let Some(&id) = host.metric_ids.get(name) {
            return id;
        }
        let id = u32::try_from(host.metrics.len()).unwrap_or(u32::MAX);
        host.metrics.push(0);
        host.metric_ids.insert(name.to_owned(), id);
        id
    });
    Status::Ok
}

#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> Status {
    match with(|host| host.metrics.get(metric_id as usize).copied()) {
        Some(value) => {
            *return_value = u64::try_from(value).unwrap_or(0);
            Status::Ok
        }
        None => Status::NotFound,
    }
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_record_metric(metric_id: u32, value: u64) -> Status {
    with(|host| match host.metrics.get_mut(metric_id as usize) {
        Some(metric) => {
            *metric = i64::try_from(value).unwrap_or(i64::MAX);
            Status::Ok
        }
        None => Status::NotFound,
    })
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn proxy_increment_metric(metric_id: u32, offset: i64) -> Status {
    with(|host| match host.metrics.get_mut(metric_id as usize) {
        Some(metric) => {
            *metric = metric.saturating_add(offset);
            Status::Ok
        }
        None => Status::NotFound,
    })
}

/// Every host function's symbol: callgrind turns counting off inside them
/// to count the module's code alone (see `report`).
pub const HOST_FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_add_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_set_effective_context",
    "proxy_call_foreign_function",
    "proxy_done",
    "proxy_define_metric",
    "proxy_get_metric",
    "proxy_record_metric",
    "proxy_increment_metric",
];

#[cfg(test)]
mod tests {
    use super::*;
    use meshwasm_shared::host_headers::decode_map;

    fn pairs(list: &[(&str, &str)]) -> HeaderMap {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn header_maps_decode_as_the_module_decodes_them() {
        let map = pairs(&[(":path", "/charge"), ("x-user", "alice"), ("empty", "")]);
        let mut bytes = Vec::new();
        serialize_map(&map, &mut bytes);
        let decoded: Vec<(String, String)> = decode_map(&bytes)
            .into_iter()
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(decoded, map);
        assert_eq!(bytes, meshwasm_shared::host_headers::encode_map(&map));
    }

    #[test]
    fn an_empty_header_map_is_a_zero_count() {
        let mut bytes = vec![1, 2, 3];
        serialize_map(&HeaderMap::new(), &mut bytes);
        assert_eq!(bytes, [0, 0, 0, 0]);
        assert!(decode_map(&bytes).is_empty());
    }

    #[test]
    fn shared_data_sets_with_a_stale_cas_fail() {
        let mut data = SharedData::default();
        assert_eq!(data.get(b"k"), None);
        assert_eq!(data.set(b"k", b"v1", 0), Status::Ok);
        let Some((value, first_cas)) = data.get(b"k") else {
            panic!("k was set");
        };
        assert_eq!(value, b"v1");
        assert_ne!(first_cas, 0);
        assert_eq!(data.set(b"k", b"v2", first_cas), Status::Ok);
        let Some((value, second_cas)) = data.get(b"k") else {
            panic!("k was set");
        };
        assert_eq!(value, b"v2");
        assert_ne!(second_cas, first_cas);
        // A writer still holding the first CAS lost the race.
        assert_eq!(data.set(b"k", b"v3", first_cas), Status::CasMismatch);
        assert_eq!(data.get(b"k").map(|(v, _)| v), Some(&b"v2"[..]));
        // CAS 0 writes unconditionally.
        assert_eq!(data.set(b"k", b"v4", 0), Status::Ok);
        assert_eq!(data.get(b"k").map(|(v, _)| v), Some(&b"v4"[..]));
    }

    #[test]
    fn properties_are_encoded_as_envoy_encodes_them() {
        let mut host = Host::new(
            vec![Plugin {
                name: "breaker".into(),
                root_id: "circuit_breaker".into(),
                configuration: Vec::new(),
            }],
            0,
            3,
        );
        host.bind_context(1, 0);
        host.enter(1);
        assert_eq!(
            host.property(b"plugin_root_id"),
            Some(&b"circuit_breaker"[..])
        );
        assert_eq!(
            host.property(b"xds\0listener_direction"),
            Some(&2i64.to_le_bytes()[..])
        );
        assert_eq!(host.property(b"response\0code"), None);
        host.stream.response_code = Some(200);
        assert_eq!(
            host.property(b"response\0code"),
            Some(&200i64.to_le_bytes()[..])
        );
        assert_eq!(host.property(b"meshwasm.authz.result"), None);
        host.stream
            .filter_state
            .push((b"meshwasm.authz.result".to_vec(), b"allow".to_vec()));
        assert_eq!(host.property(b"meshwasm.authz.result"), Some(&b"allow"[..]));
    }
}
