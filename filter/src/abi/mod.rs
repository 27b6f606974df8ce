//! The proxy-wasm glue: one module, two roles, chosen by the plugin's `root_id`.
//! - `scraper`: the singleton that scrapes every model server and publishes the table.
//! - `picker`: the HTTP filter that picks an endpoint for each request.

mod host;
mod picker;
mod scraper;
mod telemetry;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use crate::config::Config;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::Unconfigured) });
}}

enum Root {
    Unconfigured,
    /// The singleton: scrapes, picks nothing.
    Scraper(scraper::Scraping),
    /// A worker's HTTP filter: picks, and scrapes while it holds the scraper lease.
    Picker(picker::PickerRoot, scraper::Scraping),
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize, _trailers: usize) {
        if let Root::Scraper(s) | Root::Picker(_, s) = self {
            s.on_answer(token, headers, body_size);
        }
    }

    fn on_done(&mut self) -> bool {
        if let Root::Scraper(s) | Root::Picker(_, s) = self {
            s.stop();
        }
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let role = host::property_string(&["plugin_root_id"]).unwrap_or_default();
        let raw = host::plugin_configuration();
        let (config, profile) = match Config::parse_with_profile(&raw) {
            Ok(parsed) => parsed,
            Err(e) => {
                log::error!("wasm-epp ({}): {e}", role_name(&role));
                return false;
            }
        };
        for note in &config.notes {
            log::warn!("wasm-epp ({}): {note}", role_name(&role));
        }
        *self = match role.as_str() {
            "scraper" => {
                if !host::tick_every(config.scrape_interval_ms) {
                    log::error!("wasm-epp scraper: the host refused a tick period");
                    return false;
                }
                Root::Scraper(scraper::Scraping::new(config, true))
            }
            // An HTTP filter without a root_id is a picker too.
            "picker" | "" => Root::Picker(picker::PickerRoot::new(config.clone(), profile), scraper::Scraping::new(config, false)),
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
            Root::Picker(p, s) => {
                p.tick();
                s.tick();
                p.retune(s.wants_fast_ticks());
            }
            Root::Unconfigured => {}
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self {
            Root::Picker(p, _) => Some(Box::new(p.new_stream())),
            // The SDK traps on `None`, and the trapped VM would fail every request of the
            // worker: a misplaced role gets a filter that says what is wrong and passes.
            Root::Scraper(_) => Some(Box::new(picker::Misplaced::new("scraper"))),
            Root::Unconfigured => Some(Box::new(picker::Misplaced::new("unconfigured"))),
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
