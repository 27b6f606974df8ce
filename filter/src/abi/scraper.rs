//! The scraper's glue: a timer, one HTTP call per probe through the metrics cluster, and
//! the table published in shared data, by whichever VM holds the scraper lease.

use std::time::Duration;

use hashbrown::HashMap;
use proxy_wasm::types::{BufferType, MapType};

use super::host;
use crate::prefix_record;
use crate::config::{Config, PEER_TOKEN_HEADER};
use crate::in_flight;
use crate::lease::{Change, Lease};
use crate::peer;
use crate::stats;

use super::telemetry::Telemetry;
use crate::scrape::{Probe, ProbeRequest, Scraper};
use crate::table::{Table, GENERATION_KEY, TABLE_KEY};

/// A page larger than this is not a metrics page we want to parse on the data plane.
const MAX_PAGE_BYTES: usize = 8 << 20;

/// The scraper role of one VM: it scrapes while it holds the lease. The singleton claims
/// the lease when it starts; a worker bids for it on its tick.
pub struct Scraping {
    config: Config,
    lease: Lease,
    active: Option<ScraperRoot>,
}

impl Scraping {
    pub fn new(config: Config, singleton: bool) -> Self {
        let mut lease = Lease::new(host::random_u64(), config.scraper_lease_ms);
        if singleton {
            lease.claim(&host::HostStore, host::now_ms());
        }
        Scraping { config, lease, active: None }
    }

    pub fn tick(&mut self) {
        match self.lease.tick(&host::HostStore, host::now_ms()) {
            Change::Gained => {
                log::info!("wasm-epp: this VM scrapes now (lease {:016x})", self.lease.id());
                self.active = Some(ScraperRoot::start(self.config.clone()));
            }
            Change::Lost => {
                log::info!("wasm-epp: another VM took the scraper lease; this one stops scraping");
                self.active = None;
            }
            Change::Same => {}
        }
        if let Some(s) = &mut self.active {
            s.tick();
        }
    }

    /// Scraping, or waiting to learn whether a bid for the lease won: the timer must be fast.
    pub fn wants_fast_ticks(&self) -> bool {
        self.active.is_some() || self.lease.is_bidding()
    }

    pub fn on_answer(&mut self, token: u32, headers: usize, body_size: usize) {
        if let Some(s) = &mut self.active {
            s.on_answer(token, headers, body_size);
        }
    }

    /// The plugin is going away: hand the lease on at once.
    pub fn stop(&mut self) {
        if self.lease.is_held() {
            self.lease.release(&host::HostStore);
        }
        self.active = None;
    }
}

pub struct ScraperRoot {
    scraper: Scraper,
    /// Call token → what the call asked.
    pending: HashMap<u32, Call>,
    /// When to ask the peers for their records.
    peer_rounds: peer::Rounds,
    /// The in-flight gauges operators see, by endpoint address, and the values last set.
    gauges: HashMap<String, (Option<u32>, i64)>,
    telemetry: Telemetry,
    /// The in-flight counts of recent ticks, for rows taken from peers.
    in_flight_history: in_flight::History,
}

enum Call {
    Probe(ProbeRequest),
    /// The pool's membership, from the admin interface.
    Discovery,
    /// The prefix assignments of a peer: the one at this index of `peers`, or (`None`)
    /// whichever replica the peer cluster chose.
    Peer(Option<usize>),
}

impl ScraperRoot {
    /// Scraping from now on, carrying on from the table last published, if any.
    fn start(config: Config) -> Self {
        let has_peers = config.has_peers();
        let mut scraper = Scraper::new(config);
        if has_peers {
            scraper.share_as(peer::replica_id(&host::HostStore, host::random_u64()));
        }
        let published = host::shared_bytes(TABLE_KEY).map(|bytes| Table::decode(&bytes));
        match published {
            Some(Ok(table)) => scraper.resume(&table),
            Some(Err(e)) => log::info!("wasm-epp scraper: starting afresh: {e}"),
            None => {}
        }
        let telemetry = Telemetry::new(stats::pool_label(scraper.config()));
        ScraperRoot { scraper, pending: HashMap::new(), peer_rounds: peer::Rounds::default(), gauges: HashMap::new(), telemetry, in_flight_history: Default::default() }
    }

    fn tick(&mut self) {
        let now = host::now_ms();
        // A round still waiting on a slow server: publish what the others said.
        if self.scraper.is_dirty() {
            self.publish(now);
        }
        if let Some(path) = self.scraper.discovery_due(now) {
            let cluster = self.scraper.config().admin_cluster.clone();
            let headers = vec![(":method", "GET"), (":path", path.as_str()), (":authority", "envoy-admin"), ("user-agent", "wasm-epp")];
            let timeout = Duration::from_millis(self.scraper.config().scrape_timeout_ms);
            match host::get(&cluster, headers, timeout) {
                Ok(token) => {
                    self.pending.insert(token, Call::Discovery);
                }
                Err(why) => {
                    if let Some(news) = self.scraper.on_discovery_failed(&why) {
                        log::warn!("wasm-epp scraper: {news}");
                    }
                }
            }
        }
        for probe in self.scraper.due(now) {
            let extra = [("accept", "text/plain, application/json")];
            match self.call(Some(&probe.address), &probe.path, &extra) {
                Ok(token) => {
                    self.pending.insert(token, Call::Probe(probe));
                }
                Err(why) => {
                    // Said when it starts failing, not every interval.
                    if !self.scraper.failing(probe.slot) {
                        log::warn!("wasm-epp scraper: {}: {why}", probe.address);
                    }
                    self.scraper.on_failed(&probe, &why, now);
                }
            }
        }
        self.ask_peers(now);
        let counts = in_flight::Snapshot::read(&host::HostStore);
        self.show_in_flight(&counts);
        if self.scraper.config().shares_scrapes() {
            self.in_flight_history.record(now, counts);
        }
        self.telemetry.flush();
        for note in self.scraper.take_notes() {
            log::warn!("wasm-epp scraper: {note}");
        }
    }

    /// The pool's figures, under GIE's names where they mean the same.
    fn show_pool(&mut self, table: &Table, now: u64) {
        let stale_after = self.scraper.config().stale_after_ms;
        let usable: Vec<_> = table.endpoints.iter().filter(|e| e.is_usable(now, stale_after)).collect();
        let n = usable.len() as u64;
        let kv: f64 = usable.iter().map(|e| f64::from(e.metrics.kv_usage)).sum();
        let kv_percent = if n == 0 { 0 } else { (100.0 * kv / n as f64).round() as u64 };
        let queue: u64 = usable.iter().map(|e| u64::from(e.metrics.waiting)).sum();
        let running: u64 = usable.iter().map(|e| u64::from(e.metrics.running)).sum();
        let t = &mut self.telemetry;
        t.set(stats::POOL_READY_PODS, &[], n);
        t.set(stats::POOL_KV_CACHE_PERCENT, &[], kv_percent);
        t.set(stats::POOL_QUEUE_TOTAL, &[], queue);
        t.set(stats::POOL_RUNNING_TOTAL, &[], running);
    }

    /// Copies the pickers' shared in-flight counts into the gauges (off the request path:
    /// one read a tick instead of two host calls a request).
    fn show_in_flight(&mut self, counts: &in_flight::Snapshot) {
        let mut members: Vec<(usize, String)> = Vec::new();
        for (slot, address) in self.scraper.members() {
            members.push((slot, address.to_string()));
        }
        // An endpoint that left shows 0: Envoy's stats cannot be removed.
        self.gauges.retain(|address, (gauge, shown)| {
            let stays = members.iter().any(|(_, a)| a == address);
            if !stays && *shown != 0 {
                host::set(*gauge, 0);
            }
            stays
        });
        for (slot, address) in members {
            let now = counts.get(slot);
            let (gauge, shown) = self.gauges.entry(address).or_insert_with_key(|a| (host::in_flight_gauge(a), 0));
            if now != *shown {
                host::set(*gauge, now.max(0) as u64);
                *shown = now;
            }
        }
    }

    /// Asks the peers for their records, as `peer::Rounds` plans it.
    fn ask_peers(&mut self, now: u64) {
        let outstanding: Vec<Option<usize>> =
            self.pending.values().filter_map(|c| if let Call::Peer(p) = c { Some(*p) } else { None }).collect();
        let config = self.scraper.config();
        let Some(round) = self.peer_rounds.due(config, now, &outstanding) else { return };
        let (path, token, peers) = (config.peer_path.clone(), config.peer_token.clone(), config.peers.clone());
        let mut extra = Vec::new();
        if !token.is_empty() {
            extra.push((PEER_TOKEN_HEADER, token.as_str()));
        }
        if !round.full {
            extra.push((peer::WANT_HEADER, peer::WANT_ROWS));
        }
        for i in round.calls {
            let address = i.and_then(|i| peers.get(i)).map(String::as_str);
            match self.call(address, &path, &extra) {
                Ok(call) => {
                    self.pending.insert(call, Call::Peer(i));
                }
                Err(why) => log::warn!("wasm-epp scraper: peer {}: {why}", address.unwrap_or("(cluster)")),
            }
        }
    }

    /// A GET to `address` through the metrics cluster (ORIGINAL_DST: exactly that host),
    /// or, without one, to whichever replica the peer cluster picks.
    fn call(&self, address: Option<&str>, path: &str, extra: &[(&str, &str)]) -> Result<u32, String> {
        let config = self.scraper.config();
        let (cluster, authority) = match address {
            Some(a) => (config.metrics_cluster.as_str(), a),
            None => (config.peer_cluster.as_str(), "wasm-epp-peer"),
        };
        let mut headers = vec![(":method", "GET"), (":path", path), (":authority", authority), ("user-agent", "wasm-epp")];
        // An ORIGINAL_DST cluster reads the first header, an override_host cluster (the
        // pool's own, which under a mesh carries its mutual TLS) the second.
        if let Some(a) = address {
            headers.push((crate::names::headers::ORIGINAL_DST_HOST, a));
            headers.push((config.destination_header.as_str(), a));
        }
        headers.extend_from_slice(extra);
        let timeout = Duration::from_millis(config.scrape_timeout_ms);
        host::get(cluster, headers, timeout)
    }

    fn on_answer(&mut self, token: u32, headers: usize, body_size: usize) {
        let Some(call) = self.pending.remove(&token) else { return };
        let now = host::now_ms();
        // Envoy answers a failed call (timeout, refused, reset) with no headers at all.
        let status = (headers > 0)
            .then(|| host::header(MapType::HttpCallResponseHeaders, ":status"))
            .flatten()
            .and_then(|s| s.parse::<u32>().ok());
        let probe = match call {
            Call::Probe(probe) => probe,
            Call::Peer(i) => return self.on_peer_answer(i, status, body_size),
            Call::Discovery => return self.on_discovery(status, body_size),
        };
        if body_size > MAX_PAGE_BYTES {
            let why = format!("answer of {body_size} bytes is over the {MAX_PAGE_BYTES}-byte limit");
            self.scraper.on_failed(&probe, &why, now);
        } else {
            let body = host::buffer(BufferType::HttpCallResponseBody, body_size).unwrap_or_default();
            if probe.probe == Probe::Metrics {
                // What the page shows includes the requests in flight now (give or take the
                // call's latency); later sends are the pickers' to count.
                let in_flight = in_flight::Snapshot::read(&host::HostStore).get(probe.slot);
                self.scraper.note_in_flight(probe.slot, in_flight);
            }
            self.scraper.on_answer(&probe, status, &body, now);
        }
        if probe.probe == Probe::Metrics && self.scraper.failing(probe.slot) {
            self.telemetry.count(stats::SCRAPE_FAILURES, &[("endpoint", &probe.address)]);
        }
        if self.scraper.round_complete() {
            self.publish(now);
        }
    }

    fn on_discovery(&mut self, status: Option<u32>, body_size: usize) {
        let body = if body_size > MAX_PAGE_BYTES {
            log::warn!("wasm-epp scraper: the admin answer of {body_size} bytes is over the {MAX_PAGE_BYTES}-byte limit");
            Vec::new()
        } else {
            host::buffer(BufferType::HttpCallResponseBody, body_size).unwrap_or_default()
        };
        if let Some(news) = self.scraper.on_discovery(status, &body) {
            log::warn!("wasm-epp scraper: {news}");
        }
    }

    fn on_peer_answer(&mut self, peer: Option<usize>, status: Option<u32>, body_size: usize) {
        let config = self.scraper.config();
        let name = peer.and_then(|i| config.peers.get(i).cloned()).unwrap_or_else(|| config.peer_cluster.clone());
        if status != Some(200) || body_size > MAX_PAGE_BYTES {
            log::debug!("wasm-epp scraper: peer {name} answered {status:?} with {body_size} bytes");
            return;
        }
        let bytes = host::buffer(BufferType::HttpCallResponseBody, body_size).unwrap_or_default();
        let record = match peer::Record::decode(&bytes) {
            Ok(r) => r,
            Err(why) => return log::warn!("wasm-epp scraper: peer {name}: {why}"),
        };
        // Read only when the history has none: a proxy that does not share its scrapes
        // adopts no rows, and its peers' answers bring prefix assignments alone.
        let history = &self.in_flight_history;
        let now_counts = || in_flight::Snapshot::read(&host::HostStore);
        self.scraper.adopt(&record, host::now_ms(), &|slot, scraped_ms| history.count_at(slot, scraped_ms, now_counts));
        if record.prefixes.is_empty() {
            return;
        }
        match prefix_record::adopt(&host::HostStore, &record.prefixes) {
            Ok(a) if a.new + a.settled > 0 => {
                log::debug!("wasm-epp scraper: peer {name}: {} prefixes adopted, {} settled", a.new, a.settled)
            }
            Ok(_) => {}
            Err(why) => log::warn!("wasm-epp scraper: peer {name}: {why}"),
        }
    }

    fn publish(&mut self, now: u64) {
        let table = self.scraper.publish(now);
        self.show_pool(&table, now);
        // One writer: no CAS needed. The table first, then its generation, which readers
        // watch: a reader that sees the new generation finds the new table.
        if host::publish_shared(TABLE_KEY, &table.encode()) {
            host::publish_shared(GENERATION_KEY, &table.generation.to_le_bytes());
        }
    }
}
