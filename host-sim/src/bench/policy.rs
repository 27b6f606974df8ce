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
    /// `round_trip`: what each request waits before it reaches its server, beyond what
    /// the module's own decision costs (zero for the module in the proxy).
    Module {
        name: String,
        scheduler: serde_json::Value,
        proxies: usize,
        workers: usize,
        peers: bool,
        share_scrapes: bool,
        round_trip: RoundTrip,
    },
    /// Host-side, all-seeing: the server where this request's first token would come
    /// soonest, given its true prefix cache, prefill backlog, batch and adapters.
    Oracle,
}

impl Policy {
    pub fn names() -> [&'static str; 7] {
        ["round-robin", "random", "least-request", "default", "gie-default", "gie-epp", "oracle"]
    }

    pub fn by_name(name: &str) -> Option<Policy> {
        Some(match name {
            "round-robin" => Policy::RoundRobin,
            "random" => Policy::Random,
            "least-request" => Policy::LeastRequest,
            "default" | "gie-default" => Policy::module(name, serde_json::json!(name)),
            // GIE as GIE deploys it: one Endpoint Picker, with one prefix index and one
            // view of what is in flight, serving every proxy, each request paying the
            // ext_proc round trip on its way.
            "gie-epp" => Policy::Module {
                name: name.into(),
                scheduler: serde_json::json!("gie-default"),
                proxies: 1,
                workers: 1,
                peers: false,
                share_scrapes: false,
                round_trip: RoundTrip::extproc(),
            },
            "oracle" => Policy::Oracle,
            _ => return None,
        })
    }

    /// The module with `scheduler`, as 4 workers × 2 proxies that are each other's peers.
    pub fn module(name: &str, scheduler: serde_json::Value) -> Policy {
        Policy::Module { name: name.into(), scheduler, proxies: 2, workers: 4, peers: true, share_scrapes: false, round_trip: RoundTrip::default() }
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

/// A request's wait before it reaches its server, by body size: linear between measured
/// points (body bytes, µs), flat beyond them.
#[derive(Debug, Clone, Default)]
pub struct RoundTrip {
    pub points: Vec<(f64, f64)>,
}

impl RoundTrip {
    /// The ext_proc picker's added p50 latency over the module's (bench/overhead.json,
    /// concurrency 1: the round trip itself, without a queue), when that file has it;
    /// otherwise the figures measured on this machine kind.
    pub fn extproc() -> RoundTrip {
        let measured = std::fs::read("bench/overhead.json")
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["cases"].as_array().cloned())
            .map(|cases| {
                cases
                    .iter()
                    .filter(|c| c["concurrency"] == 1 && c["extproc_p50_added_us"].is_number())
                    .filter_map(|c| {
                        let extra = c["extproc_p50_added_us"].as_f64()? - c["p50_added_us"].as_f64().unwrap_or(0.0);
                        Some((c["body_bytes"].as_f64()?, extra.max(0.0)))
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|p| !p.is_empty());
        let mut points = measured.unwrap_or_else(|| FALLBACK_EXTPROC.to_vec());
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        RoundTrip { points }
    }

    pub fn us_for(&self, body_bytes: usize) -> u64 {
        let x = body_bytes as f64;
        let p = &self.points;
        let Some(first) = p.first() else { return 0 };
        if x <= first.0 {
            return first.1 as u64;
        }
        for w in p.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            if x <= x1 {
                return (y0 + (y1 - y0) * (x - x0) / (x1 - x0).max(1.0)) as u64;
            }
        }
        p.last().map_or(0, |l| l.1 as u64)
    }
}

/// (body bytes, µs) when bench/overhead.json has no ext_proc figures yet.
const FALLBACK_EXTPROC: [(f64, f64); 3] = [(1_024.0, 400.0), (16_384.0, 600.0), (225_280.0, 2_500.0)];

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
