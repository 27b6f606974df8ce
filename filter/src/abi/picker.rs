//! The picker's glue: buffer the body, decide, write the destination header or reject.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};

use super::host;
use crate::cadence::Cadence;
use crate::header_map::HeaderMap;
use crate::names;
use crate::prefix_record;
use crate::config::{Config, PEER_TOKEN_HEADER};
use crate::errors::Rejection;
use crate::request::Prompt;
use crate::scheduler::Profile;
use crate::in_flight;
use crate::peer;
use crate::stats;
use crate::store::ReadsThisMillisecond;

use super::telemetry::Telemetry;
use crate::request;
use crate::route::{Incoming, Outcome, Router, OBJECTIVE_HEADER, SUBSET_HEADER};
use crate::table::{Table, GENERATION_KEY, TABLE_KEY};

use crate::names::headers::EXPLAIN as EXPLAIN_HEADER;

pub struct PickerRoot {
    worker: Rc<RefCell<WorkerState>>,
}

/// What every stream of this worker shares: the router and the decoded table.
struct WorkerState {
    router: Router,
    /// The table as last decoded, and the CAS it had: decode again only when it changes.
    table: Option<(u32, Table)>,
    stats: Stats,
    /// This worker's side of the in-flight counts.
    ledger: in_flight::Ledger,
    /// The shared values the scheduler read in this millisecond (prefix assignments).
    reads: ReadsThisMillisecond,
    /// When the table's generation was last checked: at most once a millisecond.
    checked_ms: u64,
    /// The metrics outage last logged, so that it is said once.
    last_outage: Option<String>,
    /// The timer's period.
    cadence: Cadence,
}

struct Stats {
    routed: Option<u32>,
    /// Routed since the last tick: given to Envoy then, not with a host call a request.
    routed_unflushed: u64,
    fail_open: Option<u32>,
    rejected: Option<u32>,
    telemetry: Telemetry,
    /// Decisions so far: every `TIMED_EVERY`th is timed for the latency histogram.
    decisions: u64,
}

/// One decision in this many is timed (two more host calls).
const TIMED_EVERY: u64 = 16;

impl PickerRoot {
    pub fn new(config: Config, profile: Profile) -> Self {
        let seed = host::now_ms() ^ host::random_u64();
        let stats = Stats {
            routed: host::counter("wasm_epp.routed"),
            routed_unflushed: 0,
            fail_open: host::counter("wasm_epp.fail_open"),
            rejected: host::counter("wasm_epp.rejected"),
            telemetry: Telemetry::new(stats::pool_label(&config)),
            decisions: 0,
        };
        let ledger = in_flight::Ledger::new(config.endpoints.len());
        // The timer also drives this VM's bid for the scraper lease.
        let cadence = Cadence::new(config.scrape_interval_ms, config.scraper_lease_ms);
        if !host::tick_every(cadence.period_ms()) {
            log::warn!("wasm-epp picker: no timer: ended streams leave the in-flight counts with the next request");
        }
        let router = Router::new(config, profile, seed);
        let reads = ReadsThisMillisecond::default();
        let worker = WorkerState { router, table: None, stats, ledger, reads, checked_ms: 0, last_outage: None, cadence };
        PickerRoot { worker: Rc::new(RefCell::new(worker)) }
    }

    /// Takes this worker's ended streams off the shared counts, if no request did lately,
    /// and shows the table's age and whether the picker is ready.
    pub fn tick(&self) {
        let mut worker = self.worker.borrow_mut();
        let now = host::now_ms();
        worker.ledger.flush(&host::HostStore, now);
        worker.refresh_table(now);
        let (age, ready) = worker.readiness(now);
        worker.stats.telemetry.set(stats::TABLE_AGE_MS, &[], age.unwrap_or(0));
        worker.stats.telemetry.set(stats::READY, &[], u64::from(ready));
        worker.stats.telemetry.flush();
        if let (Some(id), n @ 1..) = (worker.stats.routed, std::mem::take(&mut worker.stats.routed_unflushed)) {
            host::add(id, n);
        }
    }

    /// Sets the timer for what comes next: fast while this VM scrapes (or bids for the
    /// lease) or its worker has traffic, slow after a quiet spell (`Cadence`).
    pub fn retune(&self, scraper_busy: bool) {
        if let Some(ms) = self.worker.borrow_mut().cadence.after_tick(scraper_busy) {
            host::tick_every(ms);
        }
    }

    pub fn new_stream(&self) -> PickerStream {
        PickerStream {
            worker: self.worker.clone(),
            path: String::new(),
            objective: None,
            subset: None,
            decided: false,
            explain: None,
            counted: None,
            refused: None,
        }
    }
}

impl WorkerState {
    /// A stream started or ended here: its counts must reach the shared ones soon.
    fn woken(&mut self) {
        if let Some(ms) = self.cadence.woken() {
            host::tick_every(ms);
        }
    }

    /// The table's age, and whether the picker schedules from it (fresh) rather than
    /// failing open.
    fn readiness(&self, now_ms: u64) -> (Option<u64>, bool) {
        let stale_after = self.router.config.stale_after_ms;
        match &self.table {
            Some((_, t)) => {
                let fresh = !t.is_stale(now_ms, stale_after) && t.endpoints.iter().any(|e| e.is_usable(now_ms, stale_after));
                (Some(now_ms.saturating_sub(t.published_ms)), fresh)
            }
            None => (None, false),
        }
    }

    /// The current table, decoded at most once per publish; its generation is looked at
    /// at most once a millisecond (tables come every scrape interval, tens of ms).
    fn refresh_table(&mut self, now_ms: u64) {
        if self.table.is_some() && now_ms == self.checked_ms {
            return;
        }
        self.checked_ms = now_ms;
        if let Some(bytes) = host::shared_bytes(GENERATION_KEY) {
            let published = bytes.try_into().map(u64::from_le_bytes).ok();
            if published.is_some() && self.table.as_ref().map(|(_, t)| t.generation) == published {
                return;
            }
        }
        let Some((bytes, cas)) = host::shared_value(TABLE_KEY) else { return };
        if self.table.as_ref().is_some_and(|(seen, _)| *seen == cas) {
            return;
        }
        match Table::decode(&bytes) {
            Ok(t) => self.table = Some((cas, t)),
            Err(e) => log::warn!("wasm-epp picker: {e}"),
        }
    }
}

pub struct PickerStream {
    worker: Rc<RefCell<WorkerState>>,
    path: String,
    objective: Option<String>,
    subset: Option<String>,
    decided: bool,
    explain: Option<String>,
    /// The in-flight slot this request is counted in, until the stream ends.
    counted: Option<usize>,
    /// A rejection decided from the headers, answered when the body has arrived.
    refused: Option<Rejection>,
}

impl PickerStream {
    /// Decides for a request whose body is `body` (empty for a bodiless one).
    fn decide(&mut self, model: Option<&str>, prompt: Prompt, body: &[u8]) -> Action {
        self.decided = true;
        let mut worker = self.worker.borrow_mut();
        let now = host::now_ms();
        worker.refresh_table(now);
        let WorkerState { router, table, stats, ledger, last_outage, reads, .. } = &mut *worker;
        let shared = reads.at(&host::HostStore, now);
        let incoming = Incoming {
            model,
            prompt,
            objective: self.objective.as_deref(),
            subset: self.subset.as_deref(),
            store: Some(&shared),
        };
        let counts = ledger.view(&host::HostStore, now);
        stats.decisions += 1;
        let timed = stats.decisions % TIMED_EVERY == 0;
        let started = if timed { host::now_ns() } else { 0 };
        let table = table.as_ref().map(|(_, t)| t);
        let outcome = router.decide(table, &incoming, now, &|slot| counts.get(slot));
        if timed {
            let us = host::now_ns().saturating_sub(started) / 1000;
            stats.telemetry.record(stats::SCHEDULER_DURATION_US, &[], us);
        }
        // A scheduled request's model passed the model filter or a rewrite rule, so its
        // name is bounded by the pool and the configuration: no scan of the table.
        let scheduled = matches!(outcome, Outcome::Route { fail_open: false, .. });
        let model_label = match model {
            Some(m) if scheduled => m,
            _ => stats::model_label(model, table),
        };
        match outcome {
            Outcome::Route { endpoints, slot, fail_open, explain, rewritten, outage } => {
                if outage != *last_outage {
                    match &outage {
                        Some(why) => log::warn!("wasm-epp picker: failing open: {why}"),
                        None if !fail_open => log::info!("wasm-epp picker: endpoints' metrics are usable again"),
                        None => {}
                    }
                    if outage.is_some() || !fail_open {
                        *last_outage = outage;
                    }
                }
                let target = rewritten.as_deref().unwrap_or(model_label);
                stats.telemetry.count(stats::REQUESTS, &[("model_name", model_label), ("target_model_name", target)]);
                if fail_open {
                    stats.telemetry.count(stats::FAIL_OPEN, &[]);
                } else {
                    stats.telemetry.count(stats::SCHEDULER_ATTEMPTS, &[("status", "success")]);
                }
                if let Some(target) = rewritten {
                    rewrite_body(body, &target);
                }
                // No endpoint known at all (failing open before the first membership):
                // Envoy's own load balancer chooses.
                if !endpoints.is_empty() {
                    let header = router.config.destination_header.as_str();
                    host::set_request_header(header, Some(&endpoints.join(",")));
                }
                stats.routed_unflushed += 1;
                if fail_open {
                    host::increment(stats.fail_open);
                }
                if let Some(slot) = slot {
                    ledger.sent(&host::HostStore, slot, now);
                    self.counted = Some(slot);
                    worker.woken();
                }
                self.explain = explain;
                Action::Continue
            }
            Outcome::Reject(r) => {
                if r.status == 503 {
                    stats.telemetry.count(stats::SCHEDULER_ATTEMPTS, &[("status", "failure")]);
                }
                if r.status == 429 {
                    stats.telemetry.count(stats::SHED, &[]);
                }
                reject(stats, &r, model_label)
            }
        }
    }
}

/// The body with its `model` replaced, and a content-length to match (the headers are
/// still held, so they can change).
fn rewrite_body(body: &[u8], target: &str) {
    let Some(new) = request::with_model(body, target) else { return };
    if !host::replace_request_body(body.len(), &new) {
        return;
    }
    host::set_request_header(crate::names::headers::CONTENT_LENGTH, Some(&new.len().to_string()));
}

/// Answers a peer with this replica's record: the rows it scraped itself (where replicas
/// share their scrapes) and its prefix assignments.
fn serve_peer(table: Option<&Table>, shares: bool, rows_only: bool) -> Action {
    let replica = peer::replica_id(&host::HostStore, host::random_u64());
    let rows = match table {
        Some(t) if shares => t.endpoints.iter().filter(|e| e.scraped_by == replica).cloned().collect(),
        _ => Vec::new(),
    };
    let prefixes = if rows_only { Vec::new() } else { prefix_record::export(&host::HostStore) };
    let record = peer::Record { replica, rows, prefixes }.encode();
    let headers = vec![("content-type", "application/octet-stream"), ("cache-control", "no-store")];
    host::respond(200, headers, &record, "a peer's record");
    Action::Pause
}

/// Answers the client and counts it; the request goes no further.
fn reject(stats: &mut Stats, r: &Rejection, model_label: &str) -> Action {
    host::increment(stats.rejected);
    let code = stats::error_code(r.status);
    stats.telemetry.count(stats::REQUESTS, &[("model_name", model_label), ("target_model_name", model_label)]);
    stats.telemetry.count(stats::REQUEST_ERRORS, &[("model_name", model_label), ("target_model_name", model_label), ("error_code", code)]);
    let body = r.body();
    let headers = vec![("content-type", "application/json")];
    host::respond(r.status, headers, body.as_bytes(), "an error answer");
    Action::Pause
}

impl Context for PickerStream {
    // Envoy calls `on_done` as it destroys the stream's filters, however the stream ended
    // (answered, failed or reset). `on_log` would be one more call into the VM a request,
    // so it is not exported (`names::UNUSED_CALLBACKS`).
    fn on_done(&mut self) -> bool {
        // No longer in flight.
        if let Some(slot) = self.counted.take() {
            let mut worker = self.worker.borrow_mut();
            worker.ledger.ended(slot);
            worker.woken();
        }
        true
    }
}

// The response body and trailers are never seen: their callbacks are not exported
// (`names::UNUSED_CALLBACKS`), so Envoy does not call into the VM for each chunk of an
// answer. An `on_http_response_body` here needs its name out of that list.
impl HttpContext for PickerStream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        // Every header in one host call; the few the picker needs are read from it.
        let bytes = host::request_headers();
        let headers = HeaderMap::parse(&bytes);
        // The destination is ours to set: a client's copy is never honoured.
        {
            let worker = self.worker.borrow();
            let destination = worker.router.config.destination_header.as_str();
            if headers.contains(destination) {
                host::set_request_header(destination, None);
            }
        }
        self.path = headers.text(names::headers::PATH).unwrap_or_default();
        // Headers that steer the picker stop here: model servers never see them. A
        // client's subset hint counts only where the configuration trusts whoever sets it.
        self.objective = headers.text(OBJECTIVE_HEADER);
        if self.objective.is_some() {
            host::set_request_header(OBJECTIVE_HEADER, None);
        }
        self.subset = headers.text(SUBSET_HEADER);
        if self.subset.is_some() {
            host::set_request_header(SUBSET_HEADER, None);
            if !self.worker.borrow().router.config.trust_subset_header {
                self.subset = None;
            }
        }
        let get = headers.get(names::headers::METHOD) == Some(b"GET");
        if get && self.is_ready_probe() {
            self.decided = true;
            return self.answer_readiness();
        }
        if self.is_peer_request(get, &headers) {
            self.decided = true;
            let mut worker = self.worker.borrow_mut();
            worker.refresh_table(host::now_ms());
            let shares = worker.router.config.shares_scrapes();
            let rows_only = headers.get(peer::WANT_HEADER) == Some(peer::WANT_ROWS.as_bytes());
            return serve_peer(worker.table.as_ref().map(|(_, t)| t), shares, rows_only);
        }
        if end_of_stream {
            return self.decide(None, Prompt::default(), &[]);
        }
        // Answered once the body is in: a reply while the client still uploads races it
        // (HTTP/2 clients may lose the answer to the stream's reset).
        self.refused = request::check_encoding(headers.text(names::headers::CONTENT_ENCODING).as_deref()).err();
        // Hold the headers until the body names the model.
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.decided {
            return Action::Continue;
        }
        let limit = self.worker.borrow().router.config.max_body_bytes;
        if body_size > limit {
            self.decided = true;
            return reject(&mut self.worker.borrow_mut().stats, &Rejection::too_large(limit), "unknown");
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.decide_on_body(body_size)
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        if self.decided {
            return Action::Continue;
        }
        // The body ended with trailers: everything buffered is the body.
        self.decide_on_body(usize::MAX)
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(text) = self.explain.take() {
            host::add_response_header(EXPLAIN_HEADER, &text);
        }
        Action::Continue
    }
}

impl PickerStream {
    /// A GET of `ready_path` (the caller checked the method): the probe of whether this
    /// picker schedules.
    fn is_ready_probe(&self) -> bool {
        let worker = self.worker.borrow();
        let path = &worker.router.config.ready_path;
        !path.is_empty() && self.path == *path
    }

    /// 200 while the picker schedules from a fresh table, 503 while it would fail open.
    fn answer_readiness(&self) -> Action {
        let mut worker = self.worker.borrow_mut();
        let now = host::now_ms();
        worker.refresh_table(now);
        let (age, ready) = worker.readiness(now);
        let usable = worker.table.as_ref().map_or(0, |(_, t)| {
            t.endpoints.iter().filter(|e| e.is_usable(now, worker.router.config.stale_after_ms)).count()
        });
        let body = serde_json::json!({"ready": ready, "table_age_ms": age, "usable_endpoints": usable}).to_string();
        let headers = vec![("content-type", "application/json"), ("cache-control", "no-store")];
        host::respond(if ready { 200 } else { 503 }, headers, body.as_bytes(), "the readiness answer");
        Action::Pause
    }

    /// A peer replica asking for this proxy's prefix assignments. A request to the path
    /// without the right token is routed as usual, its token removed.
    fn is_peer_request(&self, get: bool, headers: &HeaderMap) -> bool {
        let worker = self.worker.borrow();
        let config = &worker.router.config;
        if !config.has_peers() || self.path != config.peer_path {
            return false;
        }
        let token = headers.get(PEER_TOKEN_HEADER);
        let authorised = config.peer_token.is_empty() || token == Some(config.peer_token.as_bytes());
        if get && authorised {
            return true;
        }
        if token.is_some() {
            host::set_request_header(PEER_TOKEN_HEADER, None);
        }
        false
    }

    fn decide_on_body(&mut self, body_size: usize) -> Action {
        if let Some(r) = self.refused.take() {
            self.decided = true;
            return reject(&mut self.worker.borrow_mut().stats, &r, "unknown");
        }
        let body = host::buffer(BufferType::HttpRequestBody, body_size).unwrap_or_default();
        let prompt_bytes = self.worker.borrow().router.prompt_bytes();
        match request::parse(&self.path, &body, prompt_bytes) {
            Ok(parsed) => self.decide(parsed.model.as_deref(), parsed.prompt, &body),
            Err(r) => {
                self.decided = true;
                reject(&mut self.worker.borrow_mut().stats, &r, "unknown")
            }
        }
    }
}

/// The HTTP filter of a plugin whose role is not the picker's (`root_id: scraper` installed
/// as an HTTP filter, say): it tells the operator what to change, once per VM, and lets
/// requests through untouched but for the destination header, which stays ours.
pub struct Misplaced {
    role: &'static str,
}

thread_local! {
    static MISPLACED_LOGGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Misplaced {
    pub fn new(role: &'static str) -> Self {
        Misplaced { role }
    }
}

impl Context for Misplaced {}

impl HttpContext for Misplaced {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if !MISPLACED_LOGGED.with(|l| l.replace(true)) {
            log::error!(
                "wasm-epp: this HTTP filter's plugin is {:?}, which picks nothing: give the HTTP filter root_id \"picker\" \
                 (or none), and the scraper role only to a bootstrap_extensions singleton (or none: the pickers elect one \
                 of themselves). Requests pass unrouted until then.",
                self.role
            );
        }
        host::set_request_header(crate::config::DEFAULT_DESTINATION_HEADER, None);
        Action::Continue
    }
}
