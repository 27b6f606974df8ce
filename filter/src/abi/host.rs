//! Host calls wrapped so that a refusal from the host is a logged error, never a trap.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
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

pub fn header(map: MapType, name: &str) -> Option<String> {
    hostcalls::get_map_value(map, name).ok().flatten()
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
    hostcalls::define_metric(proxy_wasm::types::MetricType::Counter, name).ok()
}

pub fn increment(counter: Option<u32>) {
    if let Some(id) = counter {
        let _ = hostcalls::increment_metric(id, 1);
    }
}
