//! Host calls wrapped so that a refusal from the host is a logged error, never a trap.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

/// Nanoseconds since the epoch (0 if the host will not say). Read as the host gives it,
/// a u64: the SDK's `SystemTime` and `Duration` cost 128-bit arithmetic, emulated on wasm32,
/// on every read.
pub fn now_ns() -> u64 {
    let mut ns = 0u64;
    // SAFETY: the host writes one u64 to the address given.
    match unsafe { proxy_get_current_time_nanoseconds(&mut ns) } {
        0 => ns,
        _ => 0,
    }
}

pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// Random bits from the host (WASI `random_get`, through std's hash seeding), so workers
/// break ties differently. `std::process::id` is not available under WASI.
pub fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u64)
}

pub fn property_string(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    String::from_utf8(bytes).ok()
}

pub fn plugin_configuration() -> Vec<u8> {
    buffer(BufferType::PluginConfiguration, usize::MAX).unwrap_or_default()
}

pub fn buffer(kind: BufferType, max: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(kind, 0, max).ok().flatten()
}

/// One header's value as text (bytes that are not UTF-8 become U+FFFD). Not the SDK's
/// `get_map_value`, which panics on such a value: a client can send one.
pub fn header(map: MapType, name: &str) -> Option<String> {
    let bytes = hostcalls::get_map_value_bytes(map, name).ok().flatten()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
}

/// Every request header in one host call, serialized as the ABI gives them
/// (`crate::header_map` reads them in place). Empty if the host will not say.
pub fn request_headers() -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: the host writes a pointer to `size` bytes it allocated with this module's
    // `proxy_on_memory_allocate` (the SDK's, which is the global allocator), so the
    // buffer is ours to own as a Vec.
    unsafe {
        if proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size) != 0 || data.is_null() {
            return Vec::new();
        }
        Vec::from_raw_parts(data, size, size)
    }
}

pub fn set_request_header(name: &str, value: Option<&str>) {
    if let Err(e) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value) {
        log::warn!("wasm-epp: could not set request header {name}: {e:?}");
    }
}

pub fn add_response_header(name: &str, value: &str) {
    if let Err(e) = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value) {
        log::warn!("wasm-epp: could not add response header {name}: {e:?}");
    }
}

pub fn tick_every(ms: u64) -> bool {
    hostcalls::set_tick_period(Duration::from_millis(ms)).is_ok()
}

/// A counter in the host's stats (Envoy shows it as `wasmcustom.<name>`); `None` if the
/// host has no metrics.
pub fn counter(name: &str) -> Option<u32> {
    metric(proxy_wasm::types::MetricType::Counter, name)
}

pub fn increment(counter: Option<u32>) {
    if let Some(id) = counter {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// The proxy's shared data (one store per `vm_id`), for plugins.
pub struct HostStore;

impl crate::store::SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        shared_value(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        hostcalls::set_shared_data(key, Some(value), (cas != 0).then_some(cas)).is_ok()
    }
}

/// A gauge in the host's stats. Envoy's stats are process-wide: every VM that defines the
/// same name (the singleton and each worker) reads and moves the same number.
pub fn gauge(name: &str) -> Option<u32> {
    metric(proxy_wasm::types::MetricType::Gauge, name)
}

pub fn set(gauge: Option<u32>, value: u64) {
    if let Some(id) = gauge {
        record(id, value);
    }
}

/// Sets a gauge, or records a histogram sample.
pub fn record(metric: u32, value: u64) {
    let _ = hostcalls::record_metric(metric, value);
}

/// An endpoint's in-flight gauge (`stats::in_flight_gauge`).
pub fn in_flight_gauge(endpoint: &str) -> Option<u32> {
    gauge(&crate::stats::in_flight_gauge(endpoint))
}

/// A value of the proxy's shared data, if there is one.
pub fn shared_bytes(key: &str) -> Option<Vec<u8>> {
    hostcalls::get_shared_data(key).ok()?.0
}

/// A value of the proxy's shared data with its CAS, if there is one.
pub fn shared_value(key: &str) -> Option<(Vec<u8>, u32)> {
    match hostcalls::get_shared_data(key) {
        Ok((Some(bytes), Some(cas))) => Some((bytes, cas)),
        _ => None,
    }
}

/// Stores `value` unconditionally (one writer); false, logged, if the host refuses.
pub fn publish_shared(key: &str, value: &[u8]) -> bool {
    match hostcalls::set_shared_data(key, Some(value), None) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("wasm-epp: could not publish {key}: {e:?}");
            false
        }
    }
}

/// Replaces the request body (the headers are still held, so its length may change).
pub fn replace_request_body(old_len: usize, new: &[u8]) -> bool {
    match hostcalls::set_buffer(BufferType::HttpRequestBody, 0, old_len, new) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("wasm-epp picker: could not rewrite the body: {e:?}");
            false
        }
    }
}

/// Answers the stream from the module (`what` names the answer in the log if the host
/// refuses it).
pub fn respond(status: u32, headers: Vec<(&str, &str)>, body: &[u8], what: &str) {
    if let Err(e) = hostcalls::send_http_response(status, headers, Some(body)) {
        log::warn!("wasm-epp picker: could not send {what}: {e:?}");
    }
}

/// Dispatches a GET to `cluster`: the call's token, or why the host refused it.
pub fn get(cluster: &str, headers: Vec<(&str, &str)>, timeout: Duration) -> Result<u32, String> {
    hostcalls::dispatch_http_call(cluster, headers, None, vec![], timeout)
        .map_err(|status| format!("dispatch to cluster {cluster:?} failed: {status:?}"))
}

/// A metric of `kind` named `name`; `None` if the host has no metrics.
pub fn metric(kind: proxy_wasm::types::MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

/// Adds `n` to a counter.
pub fn add(counter: u32, n: u64) {
    let _ = hostcalls::increment_metric(counter, n as i64);
}
