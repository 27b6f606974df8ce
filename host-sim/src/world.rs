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

use crate::fleet::Fleet;
use crate::proxy::{HttpRequest, PendingCall, Proxy, ProxyConfig, RequestOutcome};

pub struct World {
    pub clock: Rc<Cell<u64>>,
    pub proxies: Vec<Proxy>,
    pub fleet: Fleet,
    /// Answers on their way: (due, sequence) → (proxy, call, answer).
    in_flight: BinaryHeap<Reverse<(u64, u64)>>,
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
        let mut world = World { clock, proxies: list, fleet, in_flight: BinaryHeap::new(), answers: Default::default(), seq: 0 };
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

    /// Sends calls the module dispatched to the fleet; their answers arrive later.
    fn collect_calls(&mut self) {
        let now = self.now_ns();
        for (i, p) in self.proxies.iter_mut().enumerate() {
            p.deliver_queues();
            for call in p.take_dispatched() {
                let reply = self.fleet.http_call(now, &call.headers, call.timeout_ms);
                self.seq += 1;
                self.in_flight.push(Reverse((call.issued_ns + reply.after_ns, self.seq)));
                self.answers.insert(self.seq, (i, call, reply.answer));
            }
        }
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
