//! Simulated model servers answering the scraper's calls, in virtual time: each is the
//! model-sim engine (the same model the HTTP simulator runs), with faults on demand.

use std::collections::HashMap;

use model_sim::engine::Event;
use model_sim::{metrics, Engine, Request, ServerParams};

use crate::abi::HeaderMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// `/metrics` never answers (the call times out).
    Timeout,
    /// The connection is refused.
    Refused,
    /// `/metrics` answers 500.
    ServerError,
    /// `/metrics` answers 200 with something that is not an exposition page.
    Garbage,
    /// `/metrics` answers 200 with a 10 MB page.
    Oversized,
}

pub struct SimServer {
    pub addr: String,
    pub engine: Engine,
    pub fault: Fault,
    /// Network latency of a call to it (ns).
    pub latency_ns: u64,
    /// The step in progress: when it ends and what it emits then.
    running_step: Option<(u64, Vec<Event>)>,
    /// Events delivered, with their virtual time (µs).
    pub events: Vec<(u64, Event)>,
    /// A page to serve instead of the engine's (a captured real page, say).
    pub page_override: Option<String>,
}

impl SimServer {
    pub fn new(addr: &str, params: ServerParams) -> Self {
        SimServer {
            addr: addr.into(),
            engine: Engine::new(params),
            fault: Fault::None,
            latency_ns: 1_000_000,
            running_step: None,
            events: Vec::new(),
            page_override: None,
        }
    }

    /// Runs the engine up to `now_us`, step by step.
    pub fn advance_to(&mut self, now_us: u64) {
        loop {
            match self.running_step.take() {
                Some((end, events)) if end <= now_us => {
                    self.events.extend(events.into_iter().map(|e| (end, e)));
                    self.start_step(end);
                }
                Some(step) => {
                    self.running_step = Some(step);
                    return;
                }
                None => return,
            }
        }
    }

    fn start_step(&mut self, at_us: u64) {
        self.running_step = self.engine.step(at_us).map(|s| (at_us + s.duration_us.max(1), s.events));
    }

    pub fn submit(&mut self, req: Request, now_us: u64) {
        self.advance_to(now_us);
        self.engine.submit(req, now_us);
        if self.running_step.is_none() {
            self.start_step(now_us);
        }
    }

    fn page(&mut self, now_us: u64) -> String {
        self.advance_to(now_us);
        match &self.page_override {
            Some(p) => p.clone(),
            None => metrics::render(&self.engine, now_us as f64 / 1e6),
        }
    }

    fn models(&self) -> String {
        let p = &self.engine.params;
        let mut data = vec![serde_json::json!({"id": p.model, "object": "model", "parent": null})];
        for a in &p.adapters {
            data.push(serde_json::json!({"id": a, "object": "model", "parent": p.model}));
        }
        serde_json::json!({"object": "list", "data": data}).to_string()
    }
}

/// An answer to an HTTP call: after `after_ns`, headers and body, or `None` for a failure.
pub struct CallReply {
    pub after_ns: u64,
    pub answer: Option<(HeaderMap, Vec<u8>)>,
}

#[derive(Default)]
pub struct Fleet {
    pub servers: Vec<SimServer>,
    index: HashMap<String, usize>,
    /// The pool as Envoy holds it (what its admin interface lists): every server at
    /// first; a test adds and removes hosts, or gives one Envoy's verdict (an EDS status
    /// such as `DRAINING`, or `ejected`).
    pub pool: Vec<(String, Option<String>)>,
    /// `/metrics` requests each server received.
    pub scrapes: HashMap<String, u64>,
}

impl Fleet {
    pub fn new(servers: Vec<SimServer>) -> Self {
        let index = servers.iter().enumerate().map(|(i, s)| (s.addr.clone(), i)).collect();
        let pool = servers.iter().map(|s| (s.addr.clone(), None)).collect();
        Fleet { servers, index, pool, scrapes: HashMap::new() }
    }

    /// A server that joins the fleet (and, unless the test says otherwise, the pool).
    pub fn add(&mut self, server: SimServer) {
        self.index.insert(server.addr.clone(), self.servers.len());
        self.pool.push((server.addr.clone(), None));
        self.servers.push(server);
    }

    /// What Envoy's admin interface answers to `/clusters?format=json` for the pool
    /// cluster, in Envoy 1.40's shape.
    pub fn admin_clusters(&self, cluster: &str) -> CallReply {
        let hosts: Vec<serde_json::Value> = self
            .pool
            .iter()
            .filter_map(|(addr, verdict)| {
                let (ip, port) = addr.rsplit_once(':')?;
                let health = match verdict.as_deref() {
                    Some("ejected") => serde_json::json!({"eds_health_status": "HEALTHY", "failed_outlier_check": true}),
                    Some(status) => serde_json::json!({"eds_health_status": status}),
                    None => serde_json::json!({"eds_health_status": "HEALTHY"}),
                };
                let port: u32 = port.parse().ok()?;
                Some(serde_json::json!({"address": {"socket_address": {"address": ip, "port_value": port}}, "health_status": health, "weight": 1}))
            })
            .collect();
        let body = serde_json::json!({"cluster_statuses": [{"name": cluster, "host_statuses": hosts}]}).to_string().into_bytes();
        CallReply { after_ns: 200_000, answer: Some((vec![(":status".into(), "200".into())], body)) }
    }

    pub fn server(&mut self, addr: &str) -> Option<&mut SimServer> {
        let i = *self.index.get(addr)?;
        self.servers.get_mut(i)
    }

    pub fn addresses(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.addr.clone()).collect()
    }

    /// Answers a call the module dispatched, as the ORIGINAL_DST metrics cluster would
    /// deliver it: to the server named in `x-envoy-original-dst-host`.
    pub fn http_call(&mut self, now_ns: u64, headers: &HeaderMap, timeout_ms: u64) -> CallReply {
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let timeout = CallReply { after_ns: timeout_ms * 1_000_000, answer: None };
        let refused = CallReply { after_ns: 100_000, answer: None };
        let Some(addr) = get("x-envoy-original-dst-host") else { return refused };
        let path = get(":path").unwrap_or_default();
        if path == "/metrics" {
            *self.scrapes.entry(addr.clone()).or_default() += 1;
        }
        let Some(server) = self.server(&addr) else { return refused };
        let latency = server.latency_ns;
        let ok = |body: Vec<u8>| {
            let headers = vec![(":status".to_string(), "200".to_string()), ("content-length".to_string(), body.len().to_string())];
            Some((headers, body))
        };
        let answer = match (server.fault, path.as_str()) {
            (Fault::Refused, _) => return refused,
            (Fault::Timeout, _) => return timeout,
            (_, "/v1/models") => ok(server.models().into_bytes()),
            (Fault::ServerError, _) => Some((vec![(":status".into(), "500".into())], b"internal error".to_vec())),
            (Fault::Garbage, _) => ok(b"<html>\x00\x01 {{{ not metrics }}} 1 2 3".to_vec()),
            (Fault::Oversized, _) => ok("# padding line\n".repeat(700_000).into_bytes()),
            (Fault::None, "/metrics") => ok(server.page(now_ns / 1000).into_bytes()),
            (Fault::None, _) => Some((vec![(":status".into(), "404".into())], Vec::new())),
        };
        if latency > timeout_ms * 1_000_000 {
            return timeout;
        }
        CallReply { after_ns: latency, answer }
    }
}
