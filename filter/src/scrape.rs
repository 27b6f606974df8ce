//! The scraper's state: which probes are due, what their answers mean, and the table to
//! publish. Pure, and unaware of where it runs (the singleton today; a worker that holds a
//! shared-data lease tomorrow): the glue only carries requests and answers.

use crate::config::Config;
use crate::engine;
use crate::models;
use crate::table::{EndpointState, Health, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Metrics,
    Models,
}

/// A request the glue should send.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRequest {
    pub endpoint: usize,
    pub probe: Probe,
    pub address: String,
    pub path: String,
}

#[derive(Debug, Default)]
struct Target {
    state: EndpointState,
    metrics_in_flight: bool,
    models_in_flight: bool,
    next_models_ms: u64,
    /// From `/v1/models`: (base models, adapters); `None` until one answer parsed.
    listed: Option<(Vec<String>, Vec<String>)>,
    /// From the metrics labels.
    labelled: Vec<String>,
}

pub struct Scraper {
    config: Config,
    targets: Vec<Target>,
    generation: u64,
    /// Something changed since the last publish.
    dirty: bool,
}

impl Scraper {
    pub fn new(config: Config) -> Self {
        let targets = config
            .endpoints
            .iter()
            .map(|a| Target {
                state: EndpointState { address: a.clone(), ..Default::default() },
                ..Default::default()
            })
            .collect();
        Scraper { config, targets, generation: 0, dirty: false }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Probes to send now. An endpoint whose last probe has not answered is skipped, so a
    /// slow server never has more than one scrape of each kind in flight.
    pub fn due(&mut self, now_ms: u64) -> Vec<ProbeRequest> {
        let mut out = Vec::new();
        let models_on = !self.config.models_path.is_empty();
        for (i, t) in self.targets.iter_mut().enumerate() {
            if !t.metrics_in_flight {
                t.metrics_in_flight = true;
                out.push(ProbeRequest {
                    endpoint: i,
                    probe: Probe::Metrics,
                    address: t.state.address.clone(),
                    path: self.config.metrics_path.clone(),
                });
            }
            if models_on && !t.models_in_flight && now_ms >= t.next_models_ms {
                t.models_in_flight = true;
                out.push(ProbeRequest {
                    endpoint: i,
                    probe: Probe::Models,
                    address: t.state.address.clone(),
                    path: self.config.models_path.clone(),
                });
            }
        }
        out
    }

    /// An answer arrived. `status` is `None` when there was none (timeout, refused, reset).
    pub fn on_answer(&mut self, endpoint: usize, probe: Probe, status: Option<u32>, body: &[u8], now_ms: u64) {
        let engine = self.config.engine;
        let models_interval = self.config.models_interval_ms;
        let scrape_interval = self.config.scrape_interval_ms;
        let Some(t) = self.targets.get_mut(endpoint) else { return };
        self.dirty = true;
        match probe {
            Probe::Metrics => {
                t.metrics_in_flight = false;
                t.state.checked_ms = now_ms;
                let result = match status {
                    None => Err("no answer (timeout, refused or reset)".to_string()),
                    Some(200) => std::str::from_utf8(body)
                        .map_err(|_| "metrics page is not UTF-8".to_string())
                        .and_then(|page| engine::read(engine, page)),
                    Some(code) => Err(format!("metrics answered HTTP {code}")),
                };
                match result {
                    Ok(reading) => {
                        t.state.health = Health::Healthy;
                        t.state.last_ok_ms = now_ms;
                        t.state.metrics = reading.metrics;
                        t.labelled = reading.models;
                    }
                    Err(why) => t.state.health = Health::Unhealthy(why),
                }
            }
            Probe::Models => {
                t.models_in_flight = false;
                let parsed = match status {
                    Some(200) => models::parse(body).ok(),
                    _ => None,
                };
                // Until a list is known, ask again at the scrape pace; then at the slow one.
                let ok = parsed.is_some();
                if let Some(listed) = parsed {
                    t.listed = Some(listed);
                }
                let wait = if ok || t.listed.is_some() { models_interval } else { scrape_interval.max(1000) };
                t.next_models_ms = now_ms + wait;
            }
        }
        let (mut base, adapters) = t.listed.clone().unwrap_or_default();
        for m in &t.labelled {
            if !base.contains(m) && !adapters.contains(m) {
                base.push(m.clone());
            }
        }
        t.state.models = base;
        t.state.adapters = adapters;
    }

    /// The pickers' in-flight count for `endpoint` as its metrics page is read.
    pub fn note_in_flight(&mut self, endpoint: usize, in_flight: i64) {
        if let Some(t) = self.targets.get_mut(endpoint) {
            t.state.in_flight_at_scrape = in_flight;
        }
    }

    /// Every probe sent has been answered.
    pub fn round_complete(&self) -> bool {
        self.targets.iter().all(|t| !t.metrics_in_flight && !t.models_in_flight)
    }

    /// A probe that failed before an answer could be read: not sent (no such cluster, the
    /// host refused the call), or an answer too large to take.
    pub fn on_failed(&mut self, endpoint: usize, probe: Probe, why: &str, now_ms: u64) {
        if let Some(t) = self.targets.get_mut(endpoint) {
            match probe {
                Probe::Metrics => {
                    t.metrics_in_flight = false;
                    t.state.checked_ms = now_ms;
                    t.state.health = Health::Unhealthy(why.to_string());
                    self.dirty = true;
                }
                Probe::Models => {
                    t.models_in_flight = false;
                    t.next_models_ms = now_ms + self.config.models_interval_ms;
                }
            }
        }
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The table to publish now.
    pub fn publish(&mut self, now_ms: u64) -> Table {
        self.generation += 1;
        self.dirty = false;
        Table {
            published_ms: now_ms,
            generation: self.generation,
            endpoints: self.targets.iter().map(|t| t.state.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn scraper() -> Scraper {
        let c = Config::parse(br#"{"endpoints":["10.0.0.1:8000","10.0.0.2:8000"]}"#).unwrap();
        Scraper::new(c)
    }

    const PAGE: &[u8] = b"vllm:num_requests_waiting{model_name=\"llama\"} 4\nvllm:kv_cache_usage_perc 0.5\n";
    const MODELS: &[u8] = br#"{"data":[{"id":"llama"},{"id":"sql-lora","parent":"llama"}]}"#;

    #[test]
    fn one_probe_of_each_kind_in_flight() {
        let mut s = scraper();
        let first = s.due(0);
        assert_eq!(first.len(), 4);
        assert_eq!(first[0].path, "/metrics");
        assert_eq!(first[1].path, "/v1/models");
        assert!(s.due(50).is_empty(), "nothing answered yet, nothing new sent");
        s.on_answer(0, Probe::Metrics, Some(200), PAGE, 60);
        let again = s.due(100);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].endpoint, again[0].probe), (0, Probe::Metrics));
        assert!(!s.round_complete());
    }

    #[test]
    fn answers_become_table_rows() {
        let mut s = scraper();
        s.due(0);
        s.on_answer(0, Probe::Metrics, Some(200), PAGE, 10);
        s.on_answer(0, Probe::Models, Some(200), MODELS, 10);
        s.on_answer(1, Probe::Metrics, None, b"", 1000);
        s.on_answer(1, Probe::Models, Some(404), b"", 1000);
        assert!(s.round_complete() && s.is_dirty());
        let t = s.publish(1000);
        assert!(!s.is_dirty());
        let a = &t.endpoints[0];
        assert_eq!((a.health.clone(), a.last_ok_ms, a.metrics.waiting), (Health::Healthy, 10, 4));
        assert_eq!(a.models, vec!["llama"]);
        assert_eq!(a.adapters, vec!["sql-lora"]);
        let b = &t.endpoints[1];
        assert!(matches!(&b.health, Health::Unhealthy(w) if w.contains("no answer")));
        assert_eq!((b.checked_ms, b.last_ok_ms), (1000, 0));
        // A failed models probe is retried soon; a good one only at models_interval_ms.
        let due: Vec<_> = s.due(2000).into_iter().map(|p| (p.endpoint, p.probe)).collect();
        assert!(due.contains(&(1, Probe::Models)) && !due.contains(&(0, Probe::Models)));
        assert_eq!(t.generation, 1);
        assert_eq!(s.publish(2000).generation, 2);
    }

    #[test]
    fn bad_pages_mark_unhealthy_with_the_reason() {
        for (status, body, why) in [
            (Some(500), &b"oops"[..], "HTTP 500"),
            (Some(200), &b"<html>"[..], "no vllm load metrics"),
            (Some(200), &b"\xff\xfe"[..], "not UTF-8"),
        ] {
            let mut s = scraper();
            s.due(0);
            s.on_answer(0, Probe::Metrics, Some(200), PAGE, 5);
            s.on_answer(0, Probe::Metrics, status, body, 10);
            let row = &s.publish(10).endpoints[0];
            assert!(matches!(&row.health, Health::Unhealthy(w) if w.contains(why)), "{:?}", row.health);
            assert_eq!(row.last_ok_ms, 5, "the last good scrape is kept");
        }
    }
}
