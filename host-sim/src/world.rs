//! The simulation: proxies (Envoy replicas) and a fleet of model servers on one virtual
//! clock. Ticks, HTTP-call latencies and timeouts all run on it, so a scenario replays
//! exactly from its seed, and an hour of traffic takes seconds.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Mutex, OnceLock};

use wasmtime::error::Context as _;
use wasmtime::Result;
use wasmtime::{Config, Engine, Module};

use crate::fleet::{CallReply, Fleet};

/// A call between two proxies in one zone.
const PEER_LATENCY_NS: u64 = 300_000;

pub use crate::state::{ADMIN_CLUSTER, PEER_CLUSTER, POOL_CLUSTER};
use crate::proxy::{HttpRequest, Proxy, ProxyConfig, RequestOutcome};
use crate::state::PendingCall;

pub struct World {
    pub clock: Rc<Cell<u64>>,
    pub proxies: Vec<Proxy>,
    pub fleet: Fleet,
    /// Answers on their way: (due, sequence) → (proxy, call, answer).
    in_flight: BinaryHeap<Reverse<(u64, u64)>>,
    /// The peer cluster's round robin.
    next_peer: usize,
    answers: std::collections::HashMap<u64, (usize, PendingCall, Option<(crate::abi::HeaderMap, Vec<u8>)>)>,
    seq: u64,
}

/// The compiled module, once per process and path: compiling takes most of a second.
pub fn load_module(path: &Path) -> Result<(Engine, Module)> {
    static CACHE: OnceLock<Mutex<Vec<(std::path::PathBuf, Engine, Module)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, e, m)) = cache.iter().find(|(p, _, _)| p == path) {
        return Ok((e.clone(), m.clone()));
    }
    let mut config = Config::new();
    config.consume_fuel(true);
    let profiling = crate::vm::profiling();
    if profiling {
        config.epoch_interruption(true);
    }
    let engine = Engine::new(&config)?;
    if profiling {
        let e = engine.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_micros(20));
            e.increment_epoch();
        });
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let module = Module::new(&engine, bytes).with_context(|| format!("compiling {}", path.display()))?;
    cache.push((path.to_path_buf(), engine.clone(), module.clone()));
    Ok((engine, module))
}

impl World {
    /// `proxies` Envoy replicas, each with the same config (seeds differ), over `fleet`.
    pub fn new(wasm: &Path, fleet: Fleet, proxies: usize, config: ProxyConfig) -> Result<World> {
        let (engine, module) = load_module(wasm)?;
        // Start the clock at a realistic epoch time: the module reads wall-clock time.
        let clock = Rc::new(Cell::new(1_800_000_000_000_000_000));
        let mut list = Vec::new();
        for p in 0..proxies {
            let mut c = config.clone();
            c.seed = config.seed.wrapping_add(p as u64 * 7919);
            list.push(Proxy::start(&engine, &module, clock.clone(), c)?);
        }
        let mut world =
            World { clock, proxies: list, fleet, in_flight: BinaryHeap::new(), next_peer: 0, answers: Default::default(), seq: 0 };
        world.collect_calls();
        Ok(world)
    }

    pub fn now_ns(&self) -> u64 {
        self.clock.get()
    }

    pub fn now_us(&self) -> u64 {
        self.clock.get() / 1000
    }

    /// Moves the clock forward by `ms`, running every tick and call answer due on the way.
    pub fn advance_ms(&mut self, ms: u64) {
        self.run_until(self.now_ns() + ms * 1_000_000);
    }

    pub fn run_until(&mut self, t_ns: u64) {
        loop {
            self.collect_calls();
            let next_call = self.in_flight.peek().map(|Reverse((due, _))| *due);
            let next_tick = self.proxies.iter().filter_map(|p| p.next_tick_ns()).min();
            let next = match (next_call, next_tick) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(x) => x,
                    None => break,
                },
            };
            if next > t_ns {
                break;
            }
            self.clock.set(next.max(self.clock.get()));
            if next_call == Some(next) {
                if let Some(Reverse((_, seq))) = self.in_flight.pop() {
                    if let Some((proxy, call, answer)) = self.answers.remove(&seq) {
                        self.proxies[proxy].answer_call(&call, answer);
                    }
                }
            } else {
                let now = self.clock.get();
                for p in &mut self.proxies {
                    p.tick_due(now);
                }
            }
        }
        self.clock.set(t_ns.max(self.clock.get()));
    }

    /// The address proxy `p` listens on, as its peers name it (`peers` in the plugin
    /// configuration).
    pub fn proxy_address(p: usize) -> String {
        format!("10.255.0.{}:10000", p + 1)
    }

    /// Sends calls the module dispatched to the fleet, or to a proxy they name (a peer
    /// asking for prefix assignments); their answers arrive later.
    fn collect_calls(&mut self) {
        let now = self.now_ns();
        let mut calls = Vec::new();
        for (i, p) in self.proxies.iter_mut().enumerate() {
            p.deliver_queues();
            calls.extend(p.take_dispatched().into_iter().map(|c| (i, c)));
        }
        for (i, call) in calls {
            let peer = if call.cluster == PEER_CLUSTER {
                self.next_peer = self.next_peer.wrapping_add(1);
                Some(self.next_peer % self.proxies.len().max(1))
            } else {
                self.proxy_named(&call.headers)
            };
            let reply = match peer {
                Some(peer) => self.call_proxy(peer, &call),
                None if call.cluster == ADMIN_CLUSTER => self.fleet.admin_clusters(POOL_CLUSTER),
                None => self.fleet.http_call(now, &call.headers, call.timeout_ms),
            };
            self.seq += 1;
            self.in_flight.push(Reverse((call.issued_ns + reply.after_ns, self.seq)));
            self.answers.insert(self.seq, (i, call, reply.answer));
        }
    }

    fn proxy_named(&self, headers: &crate::abi::HeaderMap) -> Option<usize> {
        let (_, host) = headers.iter().find(|(k, _)| k == "x-envoy-original-dst-host")?;
        (0..self.proxies.len()).find(|&p| *host == Self::proxy_address(p))
    }

    /// A call answered by another proxy's filter chain (its first worker), as a local
    /// response: what a peer's GET of the affinity path gets.
    fn call_proxy(&mut self, proxy: usize, call: &PendingCall) -> CallReply {
        let get = |name: &str| call.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let mut req = HttpRequest::get(&get(":path").unwrap_or_default());
        req.method = get(":method").unwrap_or_default();
        req.headers = call.headers.iter().filter(|(k, _)| !k.starts_with(':')).cloned().collect();
        let outcome = self.proxies[proxy].request(0, &req);
        let answer = outcome.local_response.as_ref().map(|r| {
            let mut headers = vec![(":status".to_string(), r.status.to_string())];
            headers.extend(r.headers.iter().cloned());
            (headers, r.body.clone())
        });
        // Anything else would have gone upstream: no peer answered.
        self.proxies[proxy].finish(&outcome, 200);
        CallReply { after_ns: PEER_LATENCY_NS, answer }
    }

    /// A request through proxy `proxy`, worker `worker`.
    pub fn request(&mut self, proxy: usize, worker: usize, req: &HttpRequest) -> RequestOutcome {
        let out = self.proxies[proxy].request(worker, req);
        self.collect_calls();
        out
    }

    pub fn finish(&mut self, proxy: usize, outcome: &RequestOutcome, status: u32) -> Option<crate::abi::HeaderMap> {
        self.proxies[proxy].finish(outcome, status)
    }

    /// Every trap in every VM of every proxy.
    pub fn traps(&self) -> Vec<String> {
        self.proxies.iter().flat_map(|p| p.traps()).collect()
    }
}
