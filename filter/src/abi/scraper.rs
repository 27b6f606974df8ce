//! The scraper's glue: a timer, one HTTP call per probe through the metrics cluster, and
//! the table published in shared data.

use std::time::Duration;

use hashbrown::HashMap;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use super::host;
use crate::config::Config;
use crate::in_flight;
use crate::scrape::{Probe, Scraper};
use crate::table::{GENERATION_KEY, TABLE_KEY};

/// A page larger than this is not a metrics page we want to parse on the data plane.
const MAX_PAGE_BYTES: usize = 8 << 20;

pub struct ScraperRoot {
    scraper: Scraper,
    /// Call token → (endpoint index, probe).
    pending: HashMap<u32, (usize, Probe)>,
}

impl ScraperRoot {
    pub fn start(config: Config) -> Option<Self> {
        if !host::tick_every(config.scrape_interval_ms) {
            log::error!("wasm-epp scraper: the host refused a tick period");
            return None;
        }
        Some(ScraperRoot { scraper: Scraper::new(config), pending: HashMap::new() })
    }

    pub fn tick(&mut self) {
        let now = host::now_ms();
        // A round still waiting on a slow server: publish what the others said.
        if self.scraper.is_dirty() {
            self.publish(now);
        }
        let config = self.scraper.config();
        let cluster = config.metrics_cluster.clone();
        let timeout = Duration::from_millis(config.scrape_timeout_ms);
        for probe in self.scraper.due(now) {
            let headers = vec![
                (":method", "GET"),
                (":path", probe.path.as_str()),
                (":authority", probe.address.as_str()),
                ("x-envoy-original-dst-host", probe.address.as_str()),
                ("accept", "text/plain, application/json"),
                ("user-agent", "wasm-epp"),
            ];
            match hostcalls::dispatch_http_call(&cluster, headers, None, vec![], timeout) {
                Ok(token) => {
                    self.pending.insert(token, (probe.endpoint, probe.probe));
                }
                Err(status) => {
                    let why = format!("dispatch to cluster {cluster:?} failed: {status:?}");
                    log::warn!("wasm-epp scraper: {}: {why}", probe.address);
                    self.scraper.on_failed(probe.endpoint, probe.probe, &why, now);
                }
            }
        }
    }

    pub fn on_answer(&mut self, token: u32, headers: usize, body_size: usize) {
        let Some((endpoint, probe)) = self.pending.remove(&token) else { return };
        let now = host::now_ms();
        // Envoy answers a failed call (timeout, refused, reset) with no headers at all.
        let status = (headers > 0)
            .then(|| host::header(MapType::HttpCallResponseHeaders, ":status"))
            .flatten()
            .and_then(|s| s.parse::<u32>().ok());
        if body_size > MAX_PAGE_BYTES {
            let why = format!("answer of {body_size} bytes is over the {MAX_PAGE_BYTES}-byte limit");
            self.scraper.on_failed(endpoint, probe, &why, now);
        } else {
            let body = host::buffer(BufferType::HttpCallResponseBody, body_size).unwrap_or_default();
            if probe == Probe::Metrics {
                // What the page shows includes the requests in flight now (give or take the
                // call's latency); later sends are the pickers' to count.
                let in_flight = in_flight::Snapshot::read(&host::HostStore).get(endpoint);
                self.scraper.note_in_flight(endpoint, in_flight);
            }
            self.scraper.on_answer(endpoint, probe, status, &body, now);
        }
        if self.scraper.round_complete() {
            self.publish(now);
        }
    }

    fn publish(&mut self, now: u64) {
        let table = self.scraper.publish(now);
        // One writer: no CAS needed. The table first, then its generation, which readers
        // watch: a reader that sees the new generation finds the new table.
        if let Err(e) = hostcalls::set_shared_data(TABLE_KEY, Some(&table.encode()), None) {
            log::warn!("wasm-epp scraper: could not publish the table: {e:?}");
            return;
        }
        let _ = hostcalls::set_shared_data(GENERATION_KEY, Some(&table.generation.to_le_bytes()), None);
    }
}
