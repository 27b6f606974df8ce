//! The routing policies the benchmark compares: what Envoy does alone (round robin,
//! random, least request), the module with a scheduler configuration, and an oracle that
//! sees every server's true state.

use model_sim::{Engine, Request};
use rand::rngs::SmallRng;
use rand::Rng;

use crate::fleet::Fleet;

#[derive(Debug, Clone)]
pub enum Policy {
    /// Envoy's ROUND_ROBIN, per proxy.
    RoundRobin,
    /// Envoy's RANDOM.
    Random,
    /// Envoy's LEAST_REQUEST: the fewer active requests of two random hosts, per proxy.
    LeastRequest,
    /// The module (`dist/epp.wasm`) with this `scheduler` value, as `proxies` Envoy
    /// replicas of `workers` workers each.
    /// With `peers`, the replicas list each other and share prefix assignments, and, with
    /// `share_scrapes`, the scraping.
    Module { name: String, scheduler: serde_json::Value, proxies: usize, workers: usize, peers: bool, share_scrapes: bool },
    /// Host-side, all-seeing: the server where this request's first token would come
    /// soonest, given its true prefix cache, prefill backlog, batch and adapters.
    Oracle,
}

impl Policy {
    pub fn names() -> [&'static str; 6] {
        ["round-robin", "random", "least-request", "default", "gie-default", "oracle"]
    }

    pub fn by_name(name: &str) -> Option<Policy> {
        Some(match name {
            "round-robin" => Policy::RoundRobin,
            "random" => Policy::Random,
            "least-request" => Policy::LeastRequest,
            "default" | "gie-default" => Policy::module(name, serde_json::json!(name)),
            "oracle" => Policy::Oracle,
            _ => return None,
        })
    }

    /// The module with `scheduler`, as 4 workers × 2 proxies that are each other's peers.
    pub fn module(name: &str, scheduler: serde_json::Value) -> Policy {
        Policy::Module { name: name.into(), scheduler, proxies: 2, workers: 4, peers: true, share_scrapes: true }
    }

    pub fn name(&self) -> &str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::Random => "random",
            Policy::LeastRequest => "least-request",
            Policy::Module { name, .. } => name,
            Policy::Oracle => "oracle",
        }
    }
}

/// A proxy's own view for the host-side policies: its rotation and its active requests.
#[derive(Debug, Default, Clone)]
pub struct ProxyView {
    pub next: usize,
    pub active: Vec<i64>,
}

/// The server a host-side policy sends `req` to.
pub fn choose(policy: &Policy, view: &mut ProxyView, fleet: &Fleet, req: &Request, rng: &mut SmallRng) -> usize {
    let n = fleet.servers.len();
    view.active.resize(n, 0);
    match policy {
        Policy::RoundRobin => {
            view.next += 1;
            view.next % n
        }
        Policy::Random => rng.gen_range(0..n),
        Policy::LeastRequest => {
            let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
            if view.active[b] < view.active[a] {
                b
            } else {
                a
            }
        }
        Policy::Oracle => {
            // Soonest first token; among equals (idle servers, say) the least busy, then any.
            let start = rng.gen_range(0..n);
            let key = |i: usize| {
                let e = &fleet.servers[i].engine;
                (time_to_first_token_us(e, req), e.num_running() + e.num_waiting(), (i + n - start) % n)
            };
            (0..n).min_by(|&a, &b| {
                let (ka, kb) = (key(a), key(b));
                ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1)).then(ka.2.cmp(&kb.2))
            })
            .unwrap_or(0)
        }
        Policy::Module { .. } => 0, // the module decides; see `run`
    }
}

/// The oracle's estimate of when `req`'s first token would come on `e`.
fn time_to_first_token_us(e: &Engine, req: &Request) -> f64 {
    let p = &e.params;
    let cached = e.cached_tokens(&req.prompt_blocks).min(req.prompt_tokens);
    let uncached = u64::from(req.prompt_tokens - cached);
    // Prefill is the bottleneck: everything queued before it, then its own uncached part.
    let mut us = (e.prefill_backlog() + uncached) as f64 * p.prefill_per_token_us;
    if e.num_running() >= p.max_num_seqs {
        // No free sequence slot: waits for decodes to finish, each step a few ms.
        us += (e.num_waiting() + 1) as f64 * p.step_base_us as f64;
    }
    if let Some(adapter) = &req.adapter {
        let (running, _) = e.adapters();
        if !running.contains(adapter) {
            us += if running.len() < p.max_loras { p.lora_load_us as f64 } else { 1e6 };
        }
    }
    // A cache about to fill means preemptions and evictions of others' prefixes.
    let need = f64::from(req.prompt_tokens - cached + req.max_tokens) / f64::from(p.block_size.max(1));
    let free = (1.0 - e.kv_usage()) * f64::from(p.num_blocks);
    if need > free {
        us += 1e6;
    }
    us
}
