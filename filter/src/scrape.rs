//! The scraper's state: which probes are due, what their answers mean, and the table to
//! publish. Pure, and unaware of where it runs (the singleton, or the worker that holds the
//! lease): the glue only carries requests and answers.
//!
//! Each endpoint has a slot, its row's place in the in-flight counts: fixed for a listed
//! pool (the list's order), and for a discovered one given when the endpoint joins and
//! freed when it leaves. A scraper that takes over from another resumes from the table
//! it published, slots and all.

use crate::config::Config;
use crate::discovery::{self, Membership};
use crate::engine;
use crate::models;
use crate::peer::{self, Share};
use crate::table::{EndpointState, Health, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Metrics,
    Models,
}

/// A request the glue should send, and hand back with its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRequest {
    pub slot: usize,
    pub probe: Probe,
    pub address: String,
    pub path: String,
}

#[derive(Debug, Default)]
struct Target {
    state: EndpointState,
    /// Left the pool: not published, its slot free for the next endpoint to join.
    gone: bool,
    metrics_in_flight: bool,
    models_in_flight: bool,
    next_metrics_ms: u64,
    next_models_ms: u64,
    /// From `/v1/models`: (base models, adapters); `None` until one answer parsed.
    listed: Option<(Vec<String>, Vec<String>)>,
    /// From the metrics labels.
    labelled: Vec<String>,
    /// Its page was cut (too many names), and that was logged.
    cut_noted: bool,
    /// When its owner, another replica, last scraped it, by the newest row heard from
    /// that owner (0: none heard).
    owner_scraped_ms: u64,
}

impl Target {
    fn new(address: &str, slot: usize) -> Target {
        let state = EndpointState { slot: slot as u32, ..EndpointState::new(address) };
        Target { state, ..Default::default() }
    }

    fn is(&self, probe: &ProbeRequest) -> bool {
        !self.gone && self.state.address == probe.address
    }
}

pub struct Scraper {
    config: Config,
    /// By slot.
    targets: Vec<Target>,
    generation: u64,
    /// Something changed since the last publish.
    dirty: bool,
    discovery_in_flight: bool,
    next_discovery_ms: u64,
    /// The last discovery failure, so that a lasting one is logged once.
    discovery_error: Option<String>,
    /// The peers heard (with `peers`), and with `share_scrapes` who scrapes what.
    share: Option<Share>,
    /// What the glue should log, once each.
    notes: Vec<String>,
}

impl Scraper {
    pub fn new(config: Config) -> Self {
        let targets = config.endpoints.iter().enumerate().map(|(slot, a)| Target::new(a, slot)).collect();
        Scraper {
            config,
            targets,
            generation: 0,
            dirty: false,
            discovery_in_flight: false,
            next_discovery_ms: 0,
            discovery_error: None,
            share: None,
            notes: Vec::new(),
        }
    }

    /// What happened that an operator should read (names cut from a page, say), once each.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// This replica's id among its peers. With `share_scrapes` it scrapes only its share
    /// from now on, and takes the rest from peers.
    pub fn share_as(&mut self, replica: u64) {
        let silence = (4 * self.config.peer_round_ms()).max(1000);
        self.share = Some(Share::new(replica, silence));
    }

    /// A row another replica scraped is trusted while no older than this.
    fn shared_row_lifetime_ms(&self) -> u64 {
        3 * self.config.scrape_interval_ms + self.config.peer_round_ms()
    }

    /// A peer's record: it is alive, and its rows replace older ones of endpoints this
    /// replica does not scrape itself. `in_flight(slot, ms)` gives this proxy's count for
    /// a slot at the millisecond the peer scraped it (or as near as it knows).
    pub fn adopt(&mut self, record: &peer::Record, now_ms: u64, in_flight: &dyn Fn(usize, u64) -> i64) {
        if let Some(share) = &mut self.share {
            share.heard(record.replica, now_ms);
        }
        let Some(share) = self.scrape_share().cloned() else { return };
        for row in &record.rows {
            let owner = share.owner(&row.address, now_ms);
            if owner == share.me {
                continue;
            }
            let Some((slot, t)) = self.targets.iter_mut().enumerate().find(|(_, t)| !t.gone && t.state.address == row.address) else {
                continue;
            };
            // The owner's row wins over a stand-in's (this replica's, while it had not
            // heard the owner), and a newer row over an older one.
            let from_owner = row.scraped_by == owner;
            if from_owner {
                t.owner_scraped_ms = t.owner_scraped_ms.max(row.checked_ms);
            }
            let newer = row.checked_ms > t.state.checked_ms;
            let replaces_stand_in = from_owner && t.state.scraped_by != owner && row.checked_ms >= t.state.checked_ms;
            if !(newer || replaces_stand_in) {
                continue;
            }
            let s = &mut t.state;
            s.health = row.health.clone();
            s.metrics = row.metrics.clone();
            s.checked_ms = row.checked_ms;
            s.last_ok_ms = row.last_ok_ms;
            s.scraped_by = row.scraped_by;
            s.in_flight_at_scrape = in_flight(slot, row.checked_ms);
            t.labelled = row.models.clone();
            merge_models(t);
            self.dirty = true;
        }
    }

    /// Leave the metrics of `t` to its owner: another replica scrapes it, and its rows
    /// are coming. Judged by the owner's rows, not by whose row the table holds: this
    /// replica's own probe, out when the owner's row came, may answer after it, and
    /// replicas whose rounds fall together would then never settle who scrapes.
    fn left_to_peer(&self, t: &Target, now_ms: u64) -> bool {
        let Some(share) = self.scrape_share() else { return false };
        share.owner(&t.state.address, now_ms) != share.me
            && t.owner_scraped_ms != 0
            && now_ms.saturating_sub(t.owner_scraped_ms) <= self.shared_row_lifetime_ms()
    }

    /// Who scrapes what, where replicas share their scrapes (`share_scrapes`).
    fn scrape_share(&self) -> Option<&Share> {
        self.share.as_ref().filter(|_| self.config.shares_scrapes())
    }

    /// The replicas alive as this one hears them (1 without peers).
    pub fn replicas_alive(&self, now_ms: u64) -> usize {
        self.share.as_ref().map_or(1, |s| s.alive(now_ms))
    }

    /// Carries on from the table another scraper published: the generations go on rising,
    /// every endpoint keeps its slot and what was known of it until its next scrape.
    pub fn resume(&mut self, table: &Table) {
        self.generation = self.generation.max(table.generation);
        if self.config.discovers() {
            self.targets.clear();
            for row in &table.endpoints {
                let slot = row.slot as usize;
                if slot >= discovery::MAX_HOSTS {
                    continue;
                }
                while self.targets.len() <= slot {
                    let mut hole = Target::new("", self.targets.len());
                    hole.gone = true;
                    self.targets.push(hole);
                }
                self.targets[slot] = Target::new(&row.address, slot);
            }
        }
        for t in self.targets.iter_mut().filter(|t| !t.gone) {
            if let Some(row) = table.endpoints.iter().find(|r| r.address == t.state.address) {
                t.state = EndpointState { slot: t.state.slot, ..row.clone() };
                t.listed = Some((row.models.clone(), row.adapters.clone()));
            }
        }
        self.dirty = true;
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Probes to send now: each endpoint's metrics every `scrape_interval_ms` (its models
    /// every `models_interval_ms`), never two of a kind in flight, so that a slow server
    /// is not piled on.
    pub fn due(&mut self, now_ms: u64) -> Vec<ProbeRequest> {
        let mut out = Vec::new();
        let models_on = !self.config.models_path.is_empty();
        let interval = self.config.scrape_interval_ms;
        let leave: Vec<bool> = self.targets.iter().map(|t| self.left_to_peer(t, now_ms)).collect();
        for (slot, t) in self.targets.iter_mut().enumerate().filter(|(_, t)| !t.gone) {
            if !t.metrics_in_flight && now_ms >= t.next_metrics_ms && !leave[slot] {
                t.metrics_in_flight = true;
                // On the interval's beat even when ticks come late, without catching up
                // after a stall.
                let next = t.next_metrics_ms.saturating_add(interval);
                t.next_metrics_ms = if next > now_ms { next } else { now_ms + interval };
                out.push(ProbeRequest {
                    slot,
                    probe: Probe::Metrics,
                    address: t.state.address.clone(),
                    path: self.config.metrics_path.clone(),
                });
            }
            if models_on && !t.models_in_flight && now_ms >= t.next_models_ms {
                t.models_in_flight = true;
                out.push(ProbeRequest {
                    slot,
                    probe: Probe::Models,
                    address: t.state.address.clone(),
                    path: self.config.models_path.clone(),
                });
            }
        }
        out
    }

    /// The admin path to read the pool's membership from now, if it is time.
    pub fn discovery_due(&mut self, now_ms: u64) -> Option<String> {
        if !self.config.discovers() || self.discovery_in_flight || now_ms < self.next_discovery_ms {
            return None;
        }
        self.discovery_in_flight = true;
        self.next_discovery_ms = now_ms + self.config.discovery_interval_ms;
        Some(discovery::admin_path(&self.config.pool_cluster))
    }

    /// The admin interface answered (`status` `None`: no answer). Returns what to log: a
    /// failure the first time it is seen, or hosts left out.
    pub fn on_discovery(&mut self, status: Option<u32>, body: &[u8]) -> Option<String> {
        self.discovery_in_flight = false;
        let cluster = self.config.pool_cluster.clone();
        let result = match status {
            Some(200) => discovery::parse(body, &cluster),
            Some(code) => Err(format!("admin answered HTTP {code}")),
            None => Err(format!("no answer from cluster {:?}", self.config.admin_cluster)),
        };
        match result {
            Ok(membership) => {
                self.discovery_error = None;
                let left_out = membership.left_out;
                self.set_members(membership);
                (left_out > 0).then(|| format!("pool {cluster:?}: {left_out} hosts left out (over {} or not ip:port)", discovery::MAX_HOSTS))
            }
            Err(why) => {
                let why = format!("pool {cluster:?} not read, keeping the last membership: {why}");
                let new = self.discovery_error.as_deref() != Some(why.as_str());
                self.discovery_error = Some(why.clone());
                new.then_some(why)
            }
        }
    }

    /// The pool is now these hosts: newcomers take free slots, leavers free theirs, and
    /// everyone gets Envoy's verdict.
    fn set_members(&mut self, membership: Membership) {
        for t in self.targets.iter_mut().filter(|t| !t.gone) {
            let host = membership.hosts.iter().find(|h| h.address == t.state.address);
            match host {
                Some(h) if t.state.envoy_unhealthy != h.unhealthy => {
                    t.state.envoy_unhealthy = h.unhealthy.clone();
                    self.dirty = true;
                }
                Some(_) => {}
                None => {
                    let slot = t.state.slot as usize;
                    *t = Target { gone: true, ..Target::new("", slot) };
                    self.dirty = true;
                }
            }
        }
        for h in membership.hosts {
            if self.targets.iter().any(|t| !t.gone && t.state.address == h.address) {
                continue;
            }
            let slot = self.targets.iter().position(|t| t.gone).unwrap_or(self.targets.len());
            let mut joined = Target::new(&h.address, slot);
            joined.state.envoy_unhealthy = h.unhealthy;
            if slot == self.targets.len() {
                self.targets.push(joined);
            } else {
                self.targets[slot] = joined;
            }
            self.dirty = true;
        }
    }

    /// An answer arrived. `status` is `None` when there was none (timeout, refused, reset).
    pub fn on_answer(&mut self, probe: &ProbeRequest, status: Option<u32>, body: &[u8], now_ms: u64) {
        let engine = self.config.engine;
        let models_interval = self.config.models_interval_ms;
        let scrape_interval = self.config.scrape_interval_ms;
        let me = self.share.as_ref().map_or(0, |s| s.me);
        // An endpoint that left the pool while its probe was out has nothing to update.
        let Some(t) = self.targets.get_mut(probe.slot).filter(|t| t.is(probe)) else { return };
        self.dirty = true;
        match probe.probe {
            Probe::Metrics => {
                t.metrics_in_flight = false;
                t.state.checked_ms = now_ms;
                t.state.scraped_by = me;
                let result = match status {
                    None => Err(Health::Unreachable("no answer (timeout, refused or reset)".to_string())),
                    // SIMD: std's check goes a byte at a time on wasm32, and pages are tens of KB.
                    Some(200) => simdutf8::basic::from_utf8(body)
                        .map_err(|_| "metrics page is not UTF-8".to_string())
                        .and_then(|page| engine::read(engine, page))
                        .map_err(Health::Unhealthy),
                    Some(code) => Err(Health::Unhealthy(format!("metrics answered HTTP {code}"))),
                };
                match result {
                    Ok(reading) => {
                        if reading.names_left_out > 0 && !t.cut_noted {
                            t.cut_noted = true;
                            self.notes.push(format!(
                                "{}: its metrics page names more than {} models; {} left out (noted once)",
                                t.state.address,
                                engine::MAX_NAMES,
                                reading.names_left_out
                            ));
                        }
                        t.state.health = Health::Healthy;
                        t.state.last_ok_ms = now_ms;
                        t.state.metrics = reading.metrics;
                        t.labelled = reading.models;
                    }
                    Err(health) => t.state.health = health,
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
        merge_models(t);
    }

    /// The pickers' in-flight count for the endpoint in `slot` as its metrics page is read.
    pub fn note_in_flight(&mut self, slot: usize, in_flight: i64) {
        if let Some(t) = self.targets.get_mut(slot) {
            t.state.in_flight_at_scrape = in_flight;
        }
    }

    /// Every probe sent has been answered.
    pub fn round_complete(&self) -> bool {
        self.targets.iter().all(|t| !t.metrics_in_flight && !t.models_in_flight)
    }

    /// A probe that failed before an answer could be read: not sent (no such cluster, the
    /// host refused the call), or an answer too large to take.
    pub fn on_failed(&mut self, probe: &ProbeRequest, why: &str, now_ms: u64) {
        let models_interval = self.config.models_interval_ms;
        let Some(t) = self.targets.get_mut(probe.slot).filter(|t| t.is(probe)) else { return };
        match probe.probe {
            Probe::Metrics => {
                t.metrics_in_flight = false;
                t.state.checked_ms = now_ms;
                t.state.health = Health::Unreachable(why.to_string());
                self.dirty = true;
            }
            Probe::Models => {
                t.models_in_flight = false;
                t.next_models_ms = now_ms + models_interval;
            }
        }
    }

    /// The discovery call could not be sent (no such cluster, say): what to log, the
    /// first time it is seen.
    pub fn on_discovery_failed(&mut self, why: &str) -> Option<String> {
        self.discovery_in_flight = false;
        let why = format!("pool {:?} not read, keeping the last membership: {why}", self.config.pool_cluster);
        let new = self.discovery_error.as_deref() != Some(why.as_str());
        self.discovery_error = Some(why.clone());
        new.then_some(why)
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The last metrics scrape of the endpoint in `slot` failed.
    pub fn failing(&self, slot: usize) -> bool {
        self.targets.get(slot).is_some_and(|t| !t.gone && t.state.health.failure().is_some())
    }

    /// The endpoints in the pool now: (slot, address).
    pub fn members(&self) -> impl Iterator<Item = (usize, &str)> {
        self.targets.iter().enumerate().filter(|(_, t)| !t.gone).map(|(slot, t)| (slot, t.state.address.as_str()))
    }

    /// The table to publish now.
    pub fn publish(&mut self, now_ms: u64) -> Table {
        self.generation += 1;
        self.dirty = false;
        Table {
            published_ms: now_ms,
            generation: self.generation,
            replicas: u32::try_from(self.replicas_alive(now_ms)).unwrap_or(u32::MAX),
            endpoints: self.targets.iter().filter(|t| !t.gone).map(|t| t.state.clone()).collect(),
        }
    }
}

/// The models a target serves: what `/v1/models` lists, and the metrics labels' names.
fn merge_models(t: &mut Target) {
    let (mut base, adapters) = t.listed.clone().unwrap_or_default();
    for m in &t.labelled {
        if !base.contains(m) && !adapters.contains(m) {
            base.push(m.clone());
        }
    }
    t.state.models = base;
    t.state.adapters = adapters;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    fn scraper() -> Scraper {
        let c = Config::parse(br#"{"endpoints":["10.0.0.1:8000","10.0.0.2:8000"]}"#).unwrap();
        Scraper::new(c)
    }

    const PAGE: &[u8] = b"vllm:num_requests_waiting{model_name=\"llama\"} 4\nvllm:kv_cache_usage_perc 0.5\n";
    const MODELS: &[u8] = br#"{"data":[{"id":"llama"},{"id":"sql-lora","parent":"llama"}]}"#;

    fn probe(s: &Scraper, slot: usize, probe: Probe) -> ProbeRequest {
        let (_, address) = s.members().find(|&(i, _)| i == slot).expect("a member in that slot");
        ProbeRequest { slot, probe, address: address.to_string(), path: String::new() }
    }

    fn answer(s: &mut Scraper, slot: usize, kind: Probe, status: Option<u32>, body: &[u8], now: u64) {
        let p = probe(s, slot, kind);
        s.on_answer(&p, status, body, now);
    }

    #[test]
    fn one_probe_of_each_kind_in_flight_on_the_interval() {
        let mut s = scraper();
        let first = s.due(0);
        assert_eq!(first.len(), 4);
        assert_eq!(first[0].path, "/metrics");
        assert_eq!(first[1].path, "/v1/models");
        assert!(s.due(50).is_empty(), "nothing answered yet, nothing new sent");
        answer(&mut s, 0, Probe::Metrics, Some(200), PAGE, 10);
        assert!(s.due(40).is_empty(), "answered, but the next scrape is due at 50");
        let again = s.due(60);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].slot, again[0].probe), (0, Probe::Metrics));
        assert!(!s.round_complete());
        // Ticks that come late keep the beat: due at 100, then 150.
        answer(&mut s, 0, Probe::Metrics, Some(200), PAGE, 70);
        assert_eq!(s.due(100).len(), 1);
        answer(&mut s, 0, Probe::Metrics, Some(200), PAGE, 120);
        assert!(s.due(140).is_empty());
        assert_eq!(s.due(150).len(), 1);
    }

    #[test]
    fn answers_become_table_rows() {
        let mut s = scraper();
        s.due(0);
        answer(&mut s, 0, Probe::Metrics, Some(200), PAGE, 10);
        answer(&mut s, 0, Probe::Models, Some(200), MODELS, 10);
        answer(&mut s, 1, Probe::Metrics, None, b"", 1000);
        answer(&mut s, 1, Probe::Models, Some(404), b"", 1000);
        assert!(s.round_complete() && s.is_dirty());
        let t = s.publish(1000);
        assert!(!s.is_dirty());
        let a = &t.endpoints[0];
        assert_eq!((a.health.clone(), a.last_ok_ms, a.metrics.waiting, a.slot), (Health::Healthy, 10, 4, 0));
        assert_eq!(a.models, vec!["llama"]);
        assert_eq!(a.adapters, vec!["sql-lora"]);
        let b = &t.endpoints[1];
        assert!(matches!(&b.health, Health::Unreachable(w) if w.contains("no answer")));
        assert_eq!((b.checked_ms, b.last_ok_ms, b.slot), (1000, 0, 1));
        // A failed models probe is retried soon; a good one only at models_interval_ms.
        let due: Vec<_> = s.due(2000).into_iter().map(|p| (p.slot, p.probe)).collect();
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
            answer(&mut s, 0, Probe::Metrics, Some(200), PAGE, 5);
            answer(&mut s, 0, Probe::Metrics, status, body, 10);
            let row = &s.publish(10).endpoints[0];
            assert!(matches!(&row.health, Health::Unhealthy(w) if w.contains(why)), "{:?}", row.health);
            assert_eq!(row.last_ok_ms, 5, "the last good scrape is kept");
        }
    }

    fn pool(hosts: &[(&str, Option<&str>)]) -> Vec<u8> {
        let hosts: Vec<serde_json::Value> = hosts
            .iter()
            .map(|(a, status)| {
                let (ip, port) = a.rsplit_once(':').unwrap();
                serde_json::json!({"address": {"socket_address": {"address": ip, "port_value": port.parse::<u32>().unwrap()}},
                                   "health_status": {"eds_health_status": status.unwrap_or("HEALTHY")}})
            })
            .collect();
        serde_json::json!({"cluster_statuses": [{"name": "llm_pool", "host_statuses": hosts}]}).to_string().into_bytes()
    }

    fn discovering() -> Scraper {
        Scraper::new(Config::parse(br#"{"pool_cluster":"llm_pool"}"#).unwrap())
    }

    #[test]
    fn the_pool_follows_envoys_membership_and_slots_are_reused() {
        let mut s = discovering();
        assert!(s.due(0).is_empty(), "nothing known before the first membership");
        assert_eq!(s.discovery_due(0).as_deref(), Some("/clusters?format=json&filter=%5Ellm_pool%24"));
        assert_eq!(s.discovery_due(10), None, "one read at a time");
        assert_eq!(s.on_discovery(Some(200), &pool(&[("10.0.0.1:80", None), ("10.0.0.2:80", Some("DRAINING"))])), None);
        assert_eq!(s.discovery_due(100), None, "every discovery_interval_ms");
        let due: Vec<(usize, String)> = s.due(0).into_iter().filter(|p| p.probe == Probe::Metrics).map(|p| (p.slot, p.address)).collect();
        assert_eq!(due, [(0, "10.0.0.1:80".to_string()), (1, "10.0.0.2:80".to_string())]);
        let t = s.publish(0);
        assert_eq!(t.endpoints[1].envoy_unhealthy.as_deref(), Some("Envoy: EDS status DRAINING"));

        // 10.0.0.1 leaves with its probe out; 10.0.0.3 joins and takes its slot.
        let stale_probe = probe(&s, 0, Probe::Metrics);
        assert!(s.discovery_due(250).is_some());
        s.on_discovery(Some(200), &pool(&[("10.0.0.2:80", None), ("10.0.0.3:80", None)]));
        let t = s.publish(260);
        let rows: Vec<(&str, u32)> = t.endpoints.iter().map(|e| (e.address.as_str(), e.slot)).collect();
        assert_eq!(rows, [("10.0.0.3:80", 0), ("10.0.0.2:80", 1)]);
        assert_eq!(t.endpoints[1].envoy_unhealthy, None, "Envoy's verdict follows it");
        s.on_answer(&stale_probe, Some(200), PAGE, 270);
        assert_eq!(s.publish(270).endpoints[0].health, Health::Unknown, "the leaver's answer is not the newcomer's");
    }

    #[test]
    fn a_bad_membership_answer_keeps_the_pool_and_is_logged_once() {
        let mut s = discovering();
        let read = |s: &mut Scraper, status: Option<u32>, body: &[u8]| {
            s.next_discovery_ms = 0;
            assert!(s.discovery_due(0).is_some());
            s.on_discovery(status, body)
        };
        assert_eq!(read(&mut s, Some(200), &pool(&[("10.0.0.1:80", None)])), None);
        let logged = read(&mut s, Some(503), b"").expect("a new failure is logged");
        assert!(logged.contains("keeping the last membership") && logged.contains("HTTP 503"), "{logged}");
        assert_eq!(read(&mut s, Some(503), b""), None, "the same failure again is not");
        assert!(read(&mut s, None, b"").is_some_and(|l| l.contains("no answer")));
        assert!(read(&mut s, Some(200), b"{}").is_some_and(|l| l.contains("no cluster")));
        assert_eq!(s.members().count(), 1, "the pool is kept through all of it");
        assert_eq!(read(&mut s, Some(200), &pool(&[("10.0.0.1:80", None)])), None);
        assert!(read(&mut s, Some(503), b"").is_some(), "after a success, a failure is news again");
    }

    #[test]
    fn a_new_scraper_resumes_from_the_published_table() {
        let mut old = discovering();
        old.discovery_due(0);
        old.on_discovery(Some(200), &pool(&[("10.0.0.1:80", None), ("10.0.0.2:80", None), ("10.0.0.3:80", None)]));
        old.discovery_due(300);
        old.on_discovery(Some(200), &pool(&[("10.0.0.1:80", None), ("10.0.0.3:80", None)]));
        old.due(300);
        answer(&mut old, 2, Probe::Metrics, Some(200), PAGE, 310);
        answer(&mut old, 2, Probe::Models, Some(200), MODELS, 310);
        let published = old.publish(320);

        let mut new = discovering();
        new.resume(&published);
        let t = new.publish(330);
        assert_eq!(t.generation, published.generation + 1, "generations go on rising");
        assert_eq!(t.endpoints, published.endpoints, "same rows in the same slots");
        // The hole at slot 1 is free for the next endpoint to join.
        new.discovery_due(0);
        new.on_discovery(Some(200), &pool(&[("10.0.0.1:80", None), ("10.0.0.3:80", None), ("10.0.0.4:80", None)]));
        let t = new.publish(400);
        let slots: Vec<(&str, u32)> = t.endpoints.iter().map(|e| (e.address.as_str(), e.slot)).collect();
        assert_eq!(slots, [("10.0.0.1:80", 0), ("10.0.0.4:80", 1), ("10.0.0.3:80", 2)]);

        // A listed pool keeps its list's order; what the table knew carries over.
        let mut listed = scraper();
        listed.due(0);
        answer(&mut listed, 1, Probe::Metrics, Some(200), PAGE, 10);
        let before = listed.publish(20);
        let mut next = scraper();
        next.resume(&before);
        assert_eq!(next.publish(30).endpoints, before.endpoints);
    }

    #[test]
    fn replicas_that_scrape_apart_still_count_each_other() {
        let config = serde_json::json!({"endpoints": ["10.0.0.1:8000"], "peers": ["10.1.0.2:10000"], "models_path": "",
            "peer_token": "0123456789abcdef", "share_scrapes": false});
        let mut a = Scraper::new(Config::parse(config.to_string().as_bytes()).unwrap());
        a.share_as(1);
        assert_eq!(a.publish(0).replicas, 1, "no peer heard yet");
        let mut row = a.publish(0).endpoints[0].clone();
        (row.scraped_by, row.checked_ms, row.metrics.waiting) = (2, 5, 7);
        a.adopt(&peer::Record { replica: 2, rows: vec![row], prefixes: vec![] }, 10, &|_, _| 0);
        let t = a.publish(10);
        assert_eq!(t.replicas, 2);
        assert_eq!(t.endpoints[0].metrics.waiting, 0, "its own scrapes, not the peer's rows");
        assert_eq!(a.publish(60_000).replicas, 1, "a peer silent for a minute is gone");
    }

    /// Two replicas (ids 1 and 2) sharing the scraping of 16 endpoints.
    fn sharing_pair() -> (Scraper, Scraper) {
        let endpoints: Vec<String> = (0..16).map(|i| format!("10.0.0.{i}:8000")).collect();
        let config = serde_json::json!({"endpoints": endpoints, "peers": ["10.1.0.1:10000", "10.1.0.2:10000"], "models_path": "", "share_scrapes": true, "peer_token": "0123456789abcdef"});
        let config = Config::parse(config.to_string().as_bytes()).unwrap();
        let (mut a, mut b) = (Scraper::new(config.clone()), Scraper::new(config));
        a.share_as(1);
        b.share_as(2);
        (a, b)
    }

    #[test]
    fn replicas_scrape_their_shares_and_take_the_rest_from_peers() {
        let (mut a, mut b) = sharing_pair();
        // Before they hear each other, each scrapes everything.
        assert_eq!(a.due(0).len(), 16);
        for p in b.due(0) {
            b.on_answer(&p, Some(200), PAGE, 5);
        }
        let record = |s: &mut Scraper, me: u64, now: u64| {
            let rows = s.publish(now).endpoints.into_iter().filter(|r| r.scraped_by == me).collect();
            peer::Record { replica: me, rows, prefixes: vec![] }
        };
        let from_b = record(&mut b, 2, 10);
        assert_eq!(from_b.rows.len(), 16);
        a.adopt(&from_b, 10, &|_, _| 3);
        let t = a.publish(10);
        let taken: Vec<&EndpointState> = t.endpoints.iter().filter(|e| e.scraped_by == 2).collect();
        assert!((3..=13).contains(&taken.len()), "a takes b's share: {}", taken.len());
        assert!(taken.iter().all(|e| e.health == Health::Healthy && e.metrics.waiting == 4 && e.in_flight_at_scrape == 3));
        // Now a scrapes only its own share (its first probes answered, the beat come round).
        for p in a.due(0) {
            let _ = p;
        }
        let owned = 16 - taken.len();
        let mut probes = Vec::new();
        a.targets.iter_mut().for_each(|t| t.metrics_in_flight = false);
        probes.extend(a.due(60));
        assert_eq!(probes.len(), owned, "only its share");
        // b falls silent: past the rows' lifetime a scrapes them again, past the silence
        // it owns everything.
        a.targets.iter_mut().for_each(|t| t.metrics_in_flight = false);
        assert_eq!(a.due(10 + a.shared_row_lifetime_ms() + 50).len(), 16);
        assert_eq!(a.replicas_alive(10), 2);
        assert_eq!(a.replicas_alive(5000), 1);
    }

    #[test]
    fn an_own_probe_answering_after_the_owners_row_does_not_take_the_endpoint_back() {
        // Rounds in step: the owner's row comes while this replica's probe is out, and the
        // probe answers after it. The next round leaves the endpoint to its owner.
        let (mut a, mut b) = sharing_pair();
        let (a_probes, b_probes) = (a.due(0), b.due(0));
        for p in &b_probes {
            b.on_answer(p, Some(200), PAGE, 5);
        }
        let rows = b.publish(5).endpoints;
        a.adopt(&peer::Record { replica: 2, rows, prefixes: vec![] }, 5, &|_, _| 0);
        for p in &a_probes {
            a.on_answer(p, Some(200), PAGE, 6);
        }
        let b_share = (0..16).filter(|&i| a.share.as_ref().unwrap().owner(&format!("10.0.0.{i}:8000"), 6) == 2).count();
        assert!((3..=13).contains(&b_share), "{b_share}");
        assert_eq!(a.due(50).len(), 16 - b_share, "only its own share, though its own rows came last");
    }
}
