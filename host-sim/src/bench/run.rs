//! One benchmark run: a workload's arrivals at one rate through one policy, on a fleet
//! of simulated servers in virtual time, with the real module deciding for module policies.

use std::collections::HashMap;
use std::path::Path;

use model_sim::engine::Event;
use model_sim::{Request, ServerParams};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::policy::{self, Policy, ProxyView};
use super::workload::{Arrival, Workload};
use crate::fleet::{Fleet, SimServer};
use crate::proxy::{HttpRequest, ProxyConfig, RequestOutcome};
use crate::world::World;

/// What a run measured.
#[derive(Debug, Default, Clone)]
pub struct RunResult {
    pub policy: String,
    pub rate: f64,
    /// Per completed request (ms).
    pub ttft_ms: Vec<f64>,
    pub e2e_ms: Vec<f64>,
    /// Time to first token of priority-0 requests (ms).
    pub ttft_p0_ms: Vec<f64>,
    pub output_tokens: u64,
    /// From the first arrival to the last token (s).
    pub span_s: f64,
    /// Prompt tokens found in the servers' prefix caches, and looked up.
    pub prefix_hits: u64,
    pub prefix_queries: u64,
    /// Answered 429 by the module (never forwarded), and how many of those had priority ≥ 0.
    pub shed: usize,
    pub shed_priority0: usize,
    /// Answered with another error, or never routed.
    pub errors: usize,
    pub traps: Vec<String>,
}

/// A routed request, until it finishes.
struct Track {
    arrival: Arrival,
    arrival_us: u64,
    priority: i32,
    first_us: Option<u64>,
    server: usize,
    proxy: usize,
    /// The module's stream, to end when the server finishes.
    stream: Option<RequestOutcome>,
}

/// How the load balancer in front deals requests to the proxies, and each proxy to its
/// workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Balancer {
    /// Strictly in turn: request k to proxy k mod P, and each proxy's to its workers in turn.
    #[default]
    Turns,
    /// Each request to a proxy and a worker at random, as an L4 balancer spreads many
    /// clients' connections over the replicas and the kernel over Envoy's workers.
    Random,
}

impl std::str::FromStr for Balancer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "turns" => Ok(Balancer::Turns),
            "random" => Ok(Balancer::Random),
            other => Err(format!("unknown balancer {other:?}; balancers: turns, random")),
        }
    }
}

impl Balancer {
    /// The proxy and the worker of request `k`.
    fn deal(self, k: usize, proxies: usize, workers: usize, rng: &mut SmallRng) -> (usize, usize) {
        let (proxies, workers) = (proxies.max(1), workers.max(1));
        match self {
            Balancer::Turns => (k % proxies, (k / proxies) % workers),
            Balancer::Random => (rng.gen_range(0..proxies), rng.gen_range(0..workers)),
        }
    }
}

pub fn addresses(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("10.0.{}.{}:8000", i / 256, i % 256)).collect()
}

/// What comes of a finished request: the next arrival it causes (a conversation's next
/// turn), given the time (µs since the start) its answer finished.
pub type FollowUp<'a> = &'a dyn Fn(&Arrival, u64) -> Option<Arrival>;

/// Runs `arrivals`, and the arrivals they cause (`follow_up`, until `horizon_us` after the
/// start), through `policy` on `servers`.
pub fn run(
    wasm: &Path,
    servers: &[ServerParams],
    arrivals: &[Arrival],
    follow_up: FollowUp,
    horizon_us: u64,
    policy: &Policy,
    objectives: &serde_json::Value,
    seed: u64,
    balancer: Balancer,
) -> Result<RunResult, String> {
    let addrs = addresses(servers.len());
    let fleet = Fleet::new(addrs.iter().zip(servers).map(|(a, p)| SimServer::new(a, p.clone())).collect());
    // Host-side policies keep a view per proxy, like Envoy's load balancers.
    let (proxies, workers, config) = match policy {
        Policy::Module { scheduler, proxies, workers, peers, share_scrapes, round_trip: _, .. } => {
            // Every replica lists them all, itself included, as one shared config would.
            let peers: Vec<String> = if *peers { (0..*proxies).map(World::proxy_address).collect() } else { vec![] };
            let plugin = json!({"endpoints": addrs, "scheduler": scheduler, "objectives": objectives, "max_fallbacks": 0, "peers": peers, "share_scrapes": share_scrapes,
                                "peer_token": "fleet-bench-peer-token"});
            let config = ProxyConfig { plugin_config: plugin.to_string(), workers: *workers, seed, ..Default::default() };
            (*proxies, *workers, config)
        }
        _ => (0, 1, ProxyConfig::default()),
    };
    let views = if proxies > 0 { proxies } else { 2 };
    let mut world = World::new(wasm, fleet, proxies, config).map_err(|e| format!("{e:#}"))?;
    if let Some(e) = world.proxies.iter().flat_map(|p| p.startup_errors.iter()).next() {
        return Err(e.clone());
    }
    world.advance_ms(500); // the scraper's first rounds
    let mut sim = Sim {
        world,
        start_us: 0,
        tracks: HashMap::new(),
        delayed: Vec::new(),
        finished: Vec::new(),
        queued: arrivals.len() as u64,
        views: vec![ProxyView::default(); views],
        result: RunResult { policy: policy.name().into(), ..Default::default() },
        last_token_us: 0,
    };
    sim.start_us = sim.world.now_us();
    let mut rng = SmallRng::seed_from_u64(seed);
    // Apart from the run's other draws, so that the balancers share everything else.
    let mut dealer = SmallRng::seed_from_u64(seed ^ 0xba1a_7ce5);
    let block_size = servers.first().map_or(16, |p| p.block_size);
    let round_trip = match policy {
        Policy::Module { round_trip, .. } => round_trip.clone(),
        _ => Default::default(),
    };
    // Arrivals in time order, with the follow-ups finished requests add.
    let mut queue: std::collections::BinaryHeap<Pending> =
        arrivals.iter().cloned().zip(0..).map(|(a, i)| Pending(a, i)).collect();
    let mut k = 0usize;
    let deadline = sim.start_us + horizon_us + 3_600_000_000;
    while sim.world.now_us() < deadline {
        let Some(next_at) = queue.peek().map(|p| sim.start_us + p.0.at_us) else {
            if sim.tracks.is_empty() {
                break;
            }
            // Let what is in flight finish; its follow-ups join the queue.
            let t = sim.world.now_us() + 50_000;
            sim.advance_to(t);
            sim.queue_follow_ups(&mut queue, follow_up, horizon_us);
            continue;
        };
        if next_at > sim.world.now_us() {
            let t = next_at.min(sim.world.now_us() + 2_000);
            sim.advance_to(t);
            sim.queue_follow_ups(&mut queue, follow_up, horizon_us);
            continue;
        }
        let Some(Pending(a, _)) = queue.pop() else { break };
        let (proxy, worker) = balancer.deal(k, views, workers, &mut dealer);
        let adapter = (a.model != servers[0].model).then(|| a.model.clone());
        let mut req = Request::for_prompt(k as u64, &a.prompt, a.max_tokens, adapter, block_size);
        if let Some(answer) = &a.answer {
            req = req.answering(&a.prompt, answer, block_size);
        }
        let (server, stream) = match policy {
            Policy::Module { .. } => match sim.through_module(proxy, worker, &a) {
                Some(routed) => routed,
                None => {
                    k += 1;
                    continue;
                }
            },
            _ => {
                let view = &mut sim.views[proxy];
                (policy::choose(policy, view, &sim.world.fleet, &req, &mut rng), None)
            }
        };
        sim.views[proxy].active.resize(servers.len(), 0);
        sim.views[proxy].active[server] += 1;
        let now = sim.world.now_us();
        // An ext_proc picker's round trip delays the request on its way to the server.
        let wait = round_trip.us_for(a.prompt.len() + 200);
        if wait == 0 {
            sim.world.fleet.servers[server].submit(req, now);
        } else {
            sim.delayed.push((now + wait, server, req));
        }
        let track = Track { priority: a.priority, arrival: a, arrival_us: now, first_us: None, server, proxy, stream };
        sim.tracks.insert(k as u64, track);
        k += 1;
    }
    let mut result = sim.result;
    result.errors += sim.tracks.len();
    result.span_s = sim.last_token_us.saturating_sub(sim.start_us) as f64 / 1e6;
    for s in &sim.world.fleet.servers {
        result.prefix_hits += s.engine.stats.prefix_hits;
        result.prefix_queries += s.engine.stats.prefix_queries;
    }
    result.traps = sim.world.traps();
    Ok(result)
}

/// An arrival in the queue, the earliest first, and at the same time the first queued
/// (`.1`): the run stays in the workload's order.
struct Pending(Arrival, u64);

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.0.at_us, self.1) == (other.0.at_us, other.1)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.0.at_us, other.1).cmp(&(self.0.at_us, self.1))
    }
}

struct Sim {
    world: World,
    start_us: u64,
    tracks: HashMap<u64, Track>,
    /// Requests on their way to a server: (when they reach it, server, request).
    delayed: Vec<(u64, usize, Request)>,
    /// Requests that finished since the last look, for their follow-ups: (arrival, when).
    finished: Vec<(Arrival, u64)>,
    /// Arrivals queued so far, the order of those at the same time.
    queued: u64,
    views: Vec<ProxyView>,
    result: RunResult,
    last_token_us: u64,
}

impl Sim {
    /// Runs proxies and servers to `t_us` in slices short enough that finished requests
    /// leave the in-flight counts about when they would in Envoy.
    fn advance_to(&mut self, t_us: u64) {
        while self.world.now_us() < t_us {
            let next = (self.world.now_us() + 2_000).min(t_us);
            self.world.run_until(next * 1000);
            // Only gie-epp delays requests: the other policies pay nothing for it here.
            if !self.delayed.is_empty() {
                let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed).into_iter().partition(|(at, _, _)| *at <= next);
                self.delayed = later;
                for (at, server, req) in due {
                    self.world.fleet.servers[server].submit(req, at);
                }
            }
            for i in 0..self.world.fleet.servers.len() {
                self.world.fleet.servers[i].advance_to(next);
                let events = std::mem::take(&mut self.world.fleet.servers[i].events);
                for (at, event) in events {
                    self.on_event(at, event);
                }
            }
        }
    }

    fn on_event(&mut self, at_us: u64, event: Event) {
        match event {
            Event::FirstToken { id } => {
                if let Some(t) = self.tracks.get_mut(&id) {
                    t.first_us = Some(at_us);
                }
            }
            Event::Token { .. } => {}
            Event::Finished { id, output_tokens, .. } => {
                let Some(t) = self.tracks.remove(&id) else { return };
                let first = t.first_us.unwrap_or(at_us);
                let ttft = first.saturating_sub(t.arrival_us) as f64 / 1000.0;
                self.result.ttft_ms.push(ttft);
                if t.priority >= 0 {
                    self.result.ttft_p0_ms.push(ttft);
                }
                self.result.e2e_ms.push(at_us.saturating_sub(t.arrival_us) as f64 / 1000.0);
                self.result.output_tokens += u64::from(output_tokens);
                if t.arrival.session.is_some() {
                    self.finished.push((t.arrival.clone(), at_us.saturating_sub(self.start_us)));
                }
                self.last_token_us = self.last_token_us.max(at_us);
                if let Some(view) = self.views.get_mut(t.proxy) {
                    if let Some(n) = view.active.get_mut(t.server) {
                        *n -= 1;
                    }
                }
                if let Some(stream) = t.stream {
                    self.world.finish(t.proxy, &stream, 200);
                }
            }
        }
    }

    /// Queues the arrivals that the requests finished since the last call cause, up to
    /// `horizon_us` after the start.
    fn queue_follow_ups(&mut self, queue: &mut std::collections::BinaryHeap<Pending>, follow_up: FollowUp, horizon_us: u64) {
        for (a, at) in std::mem::take(&mut self.finished) {
            if let Some(next) = follow_up(&a, at).filter(|n| n.at_us <= horizon_us) {
                self.queued += 1;
                queue.push(Pending(next, self.queued));
            }
        }
    }

    /// The module's decision for `a`: the server and the open stream, or `None` if the
    /// module answered itself (429 counted as shed, anything else as an error).
    fn through_module(&mut self, proxy: usize, worker: usize, a: &Arrival) -> Option<(usize, Option<RequestOutcome>)> {
        let messages: Vec<serde_json::Value> = if a.messages.is_empty() {
            vec![json!({"role": "user", "content": a.prompt})]
        } else {
            let roles = ["user", "assistant"].into_iter().cycle();
            a.messages.iter().zip(roles).map(|(content, role)| json!({"role": role, "content": content})).collect()
        };
        let body = json!({"model": a.model, "max_tokens": a.max_tokens, "messages": messages});
        let mut req = HttpRequest::post_json("/v1/chat/completions", &body);
        if let Some(objective) = a.objective {
            req.headers.push(("x-gateway-inference-objective".into(), objective.into()));
        }
        let out = self.world.request(proxy, worker, &req);
        let chosen = out
            .upstream_header("x-gateway-destination-endpoint")
            .and_then(|d| d.split(',').next())
            .and_then(|addr| self.world.fleet.servers.iter().position(|s| s.addr == addr));
        match (&out.local_response, chosen) {
            (None, Some(server)) => Some((server, Some(out))),
            (Some(r), _) if r.status == 429 => {
                self.result.shed += 1;
                if a.priority >= 0 {
                    self.result.shed_priority0 += 1;
                }
                self.world.finish(proxy, &out, 429);
                None
            }
            _ => {
                self.result.errors += 1;
                self.world.finish(proxy, &out, 503);
                None
            }
        }
    }
}

/// Every rate of `workload` through `policy`.
pub fn sweep(wasm: &Path, workload: &Workload, policy: &Policy, seed: u64, balancer: Balancer) -> Result<Vec<RunResult>, String> {
    workload
        .rates
        .iter()
        .map(|&rate| {
            let arrivals = workload.arrivals(rate, seed);
            let follow_up = |a: &Arrival, at: u64| workload.follow_up(a, at, seed);
            let horizon_us = (workload.duration_s * 2e6) as u64;
            let mut r = run(wasm, &workload.servers, &arrivals, &follow_up, horizon_us, policy, &workload.objectives, seed, balancer)?;
            r.rate = rate;
            Ok(r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_deal_in_order_and_random_spreads_without_a_pattern() {
        let mut rng = SmallRng::seed_from_u64(1);
        let turns: Vec<_> = (0..6).map(|k| Balancer::Turns.deal(k, 2, 3, &mut rng)).collect();
        assert_eq!(turns, [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]);
        let dealt: Vec<_> = (0..8000).map(|k| Balancer::Random.deal(k, 2, 4, &mut rng)).collect();
        let mut counts = [[0; 4]; 2];
        for &(p, w) in &dealt {
            counts[p][w] += 1;
        }
        assert!(counts.iter().flatten().all(|&n| (850..1150).contains(&n)), "every proxy and worker about an eighth: {counts:?}");
        let same_in_a_row = dealt.windows(2).filter(|w| w[0].0 == w[1].0).count();
        assert!((3600..4400).contains(&same_in_a_row), "a proxy gets two in a row about half the time: {same_in_a_row}");
        assert_eq!("random".parse(), Ok(Balancer::Random));
        assert!("round-robin".parse::<Balancer>().is_err());
    }
}
