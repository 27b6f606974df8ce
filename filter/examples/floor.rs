//! The floor of `bench-overhead`: the least any body-reading proxy-wasm filter does. It
//! holds the headers, lets Envoy buffer the body, reads it into the VM, and lets the
//! request go, choosing nothing. What Envoy and V8 charge for that is not the picker's
//! to save; the benchmark reports the module against Envoy alone and against this.
//!
//! Built by `./build.sh bench-overhead` into dist/bench/floor.wasm.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Floor) });
}}

struct Floor;

impl Context for Floor {}

impl RootContext for Floor {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
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
        let _body = self.get_http_request_body(0, body_size);
        Action::Continue
    }
}
