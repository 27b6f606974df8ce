//! A test fixture, not a filter: a module whose HTTP filter panics on the request body,
//! so that host-sim's tests can show how a trap is reported (the callback, the message)
//! and that a failed VM stays failed. Built by `./build.sh test` into
//! dist/test/panics.wasm.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PanicsRoot) });
}}

struct PanicsRoot;

impl Context for PanicsRoot {}

impl RootContext for PanicsRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Panics))
    }
}

struct Panics;

impl Context for Panics {}

impl HttpContext for Panics {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        Action::Pause
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        panic!("injected panic (the test fixture dist/test/panics.wasm)");
    }
}
