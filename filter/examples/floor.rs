//! The floor of `bench-overhead`: the least any body-reading proxy-wasm filter does. It
//! holds the headers, lets Envoy buffer the body, reads it into the VM, and lets the
//! request go, choosing nothing. What Envoy and V8 charge for that is not the picker's
//! to save; the benchmark reports the module against Envoy alone and against this.
//!
//! With `{"steps": N}` in its plugin configuration it also does the first N of the
//! picker's chores (numbered below), the same host calls with the same sizes but no
//! decision, so that `bench-overhead --steps` can show what each costs inside real Envoy.
//!
//! Built by `./build.sh bench-overhead` into dist/bench/floor.wasm.

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot::default()) });
}}

#[derive(Default)]
struct FloorRoot {
    steps: usize,
    endpoints: Rc<Vec<String>>,
    next: Rc<Cell<usize>>,
    last_ms: Rc<Cell<Option<u128>>>,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let doc: serde_json::Value = serde_json::from_slice(&config).unwrap_or_default();
        self.steps = doc["steps"].as_u64().unwrap_or(0) as usize;
        let endpoints = doc["endpoints"].as_array().map(|a| a.iter().filter_map(|e| Some(e.as_str()?.to_string())).collect());
        self.endpoints = Rc::new(endpoints.unwrap_or_default());
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            steps: self.steps,
            endpoints: self.endpoints.clone(),
            next: self.next.clone(),
            last_ms: self.last_ms.clone(),
            headers: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor {
    steps: usize,
    endpoints: Rc<Vec<String>>,
    next: Rc<Cell<usize>>,
    /// The millisecond of this worker's last shared-data chores.
    last_ms: Rc<Cell<Option<u128>>>,
    /// The serialized request headers' size (read as the picker reads them).
    headers: usize,
}

impl Context for Floor {}

/// The picker's `request::ModelOnly`, written again: linking the epp crate would bring its
/// own proxy-wasm entry points into this module.
#[derive(serde::Deserialize)]
struct ModelOnly {
    #[allow(dead_code)]
    model: Option<serde_json::Value>,
}

const IN_FLIGHT: &str = "floor/in-flight";

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
}

/// The request's headers serialized, as the picker's `host::request_headers` reads them.
fn request_headers() -> Vec<u8> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as in the picker: the host hands over a buffer from this module's allocator.
    unsafe {
        if proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size) != 0 || data.is_null() {
            return Vec::new();
        }
        Vec::from_raw_parts(data, size, size)
    }
}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        // 1: the request headers, all in one call (the picker reads its few from them).
        if self.steps >= 1 {
            self.headers = request_headers().len();
        }
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size).ok().flatten().unwrap_or_default();
        // 5: the body parsed as the picker parses it.
        if self.steps >= 5 {
            let _ = serde_json::from_slice::<ModelOnly>(&body);
        }
        // 2: the clock, and in a millisecond's first request three shared-data reads (the
        // table's generation, a prefix record, the in-flight counts); 3: a CAS write then.
        // As the picker, a worker's later requests in the same millisecond share them.
        let now_ms = || hostcalls::get_current_time().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_millis());
        let first_of_its_millisecond = self.steps >= 2 && {
            let ms = now_ms();
            self.last_ms.replace(ms) != ms
        };
        if first_of_its_millisecond {
            let _ = hostcalls::get_shared_data("floor/generation");
            let _ = hostcalls::get_shared_data("floor/prefix-record");
            let (counts, cas) = hostcalls::get_shared_data(IN_FLIGHT).ok().unwrap_or((None, None));
            if self.steps >= 3 {
                let mut counts = counts.unwrap_or_else(|| vec![0; 4 * self.endpoints.len()]);
                if let Some(c) = counts.first_mut() {
                    *c = c.wrapping_add(1);
                }
                let _ = hostcalls::set_shared_data(IN_FLIGHT, Some(&counts), cas);
            }
        }
        // 4: the destination header, which Envoy's override_host policy then reads.
        if self.steps >= 4 && !self.endpoints.is_empty() {
            let i = self.next.get();
            self.next.set(i.wrapping_add(1));
            let n = self.endpoints.len();
            let value = format!("{},{}", self.endpoints[i % n], self.endpoints[(i + 1) % n]);
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-gateway-destination-endpoint", Some(&value));
        }
        Action::Continue
    }
}
