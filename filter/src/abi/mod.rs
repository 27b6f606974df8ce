//! The proxy-wasm glue: one module, two roles, chosen by the plugin's `root_id`.
//! - `scraper`: the singleton that scrapes every model server and publishes the table.
//! - `picker`: the HTTP filter that picks an endpoint for each request.

mod host;
mod picker;
mod scraper;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use crate::config::Config;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::Unconfigured) });
}}

enum Root {
    Unconfigured,
    Scraper(scraper::ScraperRoot),
    Picker(picker::PickerRoot),
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize, _trailers: usize) {
        if let Root::Scraper(s) = self {
            s.on_answer(token, headers, body_size);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let role = host::property_string(&["plugin_root_id"]).unwrap_or_default();
        let raw = host::plugin_configuration();
        let config = match Config::parse(&raw) {
            Ok(c) => c,
            Err(e) => {
                log::error!("wasm-epp ({}): {e}", role_name(&role));
                return false;
            }
        };
        *self = match role.as_str() {
            "scraper" => match scraper::ScraperRoot::start(config) {
                Some(s) => Root::Scraper(s),
                None => return false,
            },
            // An HTTP filter without a root_id is a picker too.
            "picker" | "" => Root::Picker(picker::PickerRoot::new(config)),
            other => {
                log::error!("wasm-epp: unknown root_id {other:?}: use \"scraper\" or \"picker\"");
                return false;
            }
        };
        log::info!("wasm-epp {} configured", role_name(&role));
        true
    }

    fn on_tick(&mut self) {
        match self {
            Root::Scraper(s) => s.tick(),
            Root::Picker(p) => p.tick(),
            Root::Unconfigured => {}
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self {
            Root::Picker(p) => Some(Box::new(p.new_stream())),
            _ => None,
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn role_name(root_id: &str) -> &str {
    if root_id.is_empty() {
        "picker"
    } else {
        root_id
    }
}
