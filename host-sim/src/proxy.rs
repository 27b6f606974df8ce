//! One simulated Envoy: a singleton scraper VM and N worker picker VMs sharing one
//! `vm_id`'s shared data, queues and metrics, and the filter-chain behaviour around them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use wasmtime::Result;
use wasmtime::{Engine, Module};

use crate::abi::{self, HeaderMap};
use crate::state::{LocalResponse, PendingCall, ProxyState};
use crate::vm::{HostState, Phase, StreamState, Vm, ROOT_CONTEXT};

/// How to build a proxy: the same knobs as the Envoy config in `envoy/`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The plugin configuration JSON, given to both roles.
    pub plugin_config: String,
    pub workers: usize,
    pub vm_id: String,
    /// The picker's plugin setting; without it, a Pause from request headers does not hold
    /// the request (Envoy continues it), so the destination must be set from headers alone.
    pub allow_on_headers_stop_iteration: bool,
    /// Envoy's per-connection buffer limit: a larger buffered body gets Envoy's own 413.
    pub buffer_limit_bytes: usize,
    pub clusters: Vec<String>,
    pub seed: u64,
    /// A singleton scraper VM beside the workers (`bootstrap_extensions`); without one, the
    /// workers elect a scraper among themselves, as under Istio or Envoy Gateway.
    pub singleton: bool,
    /// The singleton's root id (Envoy passes whatever the configuration says).
    pub singleton_root_id: String,
    /// The workers' root id.
    pub worker_root_id: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            plugin_config: String::new(),
            workers: 2,
            vm_id: "wasm_epp".into(),
            allow_on_headers_stop_iteration: true,
            buffer_limit_bytes: 16 << 20,
            clusters: vec![
                "wasm_epp_metrics".into(),
                crate::state::POOL_CLUSTER.into(),
                crate::state::PEER_CLUSTER.into(),
                crate::state::ADMIN_CLUSTER.into(),
            ],
            seed: 1,
            singleton: true,
            singleton_root_id: "scraper".into(),
            worker_root_id: "picker".into(),
        }
    }
}

/// A request as the downstream client sends it.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// Body chunk size as it arrives (0: one chunk).
    pub chunk: usize,
}

impl HttpRequest {
    pub fn post_json(path: &str, body: &serde_json::Value) -> Self {
        HttpRequest {
            method: "POST".into(),
            path: path.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            chunk: 0,
        }
    }
    pub fn get(path: &str) -> Self {
        HttpRequest { method: "GET".into(), path: path.into(), ..Default::default() }
    }
}

/// What the filter chain did with a request.
#[derive(Debug, Clone, Default)]
pub struct RequestOutcome {
    pub worker: usize,
    pub context: u32,
    /// The request headers as they went upstream; `None` if the request never did.
    pub upstream_headers: Option<HeaderMap>,
    /// The request body as it went upstream (after any rewrite by the module).
    pub upstream_body: Option<Vec<u8>>,
    pub local_response: Option<LocalResponse>,
    /// Wasm instructions (fuel) the module spent on this request's callbacks.
    pub fuel: u64,
    /// The module trapped; the message names the callback and the panic.
    pub trap: Option<String>,
    /// The module paused and never resumed nor answered: the request would hang.
    pub stuck: bool,
}

impl RequestOutcome {
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        self.upstream_headers.as_ref()?.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    pub fn status(&self) -> Option<u32> {
        self.local_response.as_ref().map(|r| r.status)
    }
}

pub struct Proxy {
    pub state: Rc<RefCell<ProxyState>>,
    pub config: ProxyConfig,
    /// With a singleton, VM 0 is it and the workers follow; without, the workers alone.
    pub vms: Vec<Vm>,
    /// Errors from start-up (a VM that refused its configuration), with the logs.
    pub startup_errors: Vec<String>,
    engine: Engine,
    module: Module,
    /// VMs started so far, for fresh seeds when one is reloaded.
    started: u64,
}

impl Proxy {
    pub fn start(engine: &Engine, module: &Module, clock: Rc<Cell<u64>>, config: ProxyConfig) -> Result<Proxy> {
        let state = Rc::new(RefCell::new(ProxyState::new(clock, config.clusters.clone())));
        let mut proxy =
            Proxy { state, config, vms: Vec::new(), startup_errors: Vec::new(), engine: engine.clone(), module: module.clone(), started: 0 };
        let count = proxy.config.workers + usize::from(proxy.config.singleton);
        for i in 0..count {
            let vm = proxy.new_vm(i)?;
            proxy.vms.push(vm);
        }
        Ok(proxy)
    }

    /// The VM at `index` started and configured as Envoy does it.
    fn new_vm(&mut self, index: usize) -> Result<Vm> {
        let singleton = self.config.singleton && index == 0;
        let (root, name) = if singleton {
            (self.config.singleton_root_id.clone(), "wasm_epp_scraper")
        } else {
            (self.config.worker_root_id.clone(), "wasm_epp_picker")
        };
        let seed = self.config.seed.wrapping_mul(1_000_003).wrapping_add(self.started);
        self.started += 1;
        let host = HostState::new(self.state.clone(), index, &root, name, &self.config.vm_id, self.config.plugin_config.as_bytes(), seed);
        let mut vm = Vm::new(&self.engine, &self.module, host)?;
        let size = self.config.plugin_config.len() as i32;
        // Envoy's order: the root context, then vm_start, then configure.
        let created = vm.call("proxy_on_context_create", ROOT_CONTEXT, Phase::Root, &[ROOT_CONTEXT as i32, 0]);
        let started = created.and_then(|_| vm.call("proxy_on_vm_start", ROOT_CONTEXT, Phase::VmStart, &[ROOT_CONTEXT as i32, 0]));
        let configured = started.and_then(|_| vm.call("proxy_on_configure", ROOT_CONTEXT, Phase::Configure, &[ROOT_CONTEXT as i32, size]));
        match configured {
            Ok(1) => {}
            Ok(_) => {
                let logs: Vec<String> = vm.state().logs.iter().map(|(_, m)| m.clone()).collect();
                self.startup_errors.push(format!("{root} VM refused its configuration: {}", logs.join(" | ")));
                vm.failed = Some("configuration refused".into());
            }
            Err(trap) => self.startup_errors.push(format!("{root} VM: {trap}")),
        }
        Ok(vm)
    }

    pub fn worker_count(&self) -> usize {
        self.vms.len() - usize::from(self.config.singleton)
    }

    /// The VM index of worker `worker`.
    pub fn worker_vm(&self, worker: usize) -> usize {
        usize::from(self.config.singleton) + worker % self.worker_count().max(1)
    }

    /// Worker `worker`'s VM stops dead: no ticks, no callbacks, as a VM Envoy gave up on.
    /// Its requests in flight are lost with it.
    pub fn kill_worker(&mut self, worker: usize) {
        let index = self.worker_vm(worker);
        self.vms[index].failed = Some("killed by the test".into());
    }

    /// Worker `worker`'s VM is replaced by a fresh one (Envoy reloading a failed VM): a
    /// new instance, configured anew, sharing the proxy's shared data.
    pub fn reload_worker(&mut self, worker: usize) -> Result<()> {
        let index = self.worker_vm(worker);
        let vm = self.new_vm(index)?;
        self.vms[index] = vm;
        Ok(())
    }

    /// VM `vm`'s timer period in ms (0: it has none).
    pub fn tick_period_ms(&self, vm: usize) -> u64 {
        self.vms.get(vm).map_or(0, |v| v.state().tick_period_ms)
    }

    /// The VMs whose last word on the scraper lease is that they hold it.
    pub fn scraping_vms(&self) -> Vec<usize> {
        (0..self.vms.len())
            .filter(|&i| {
                let vm = &self.vms[i];
                let last = vm.state().logs.iter().rev().find(|(_, m)| m.contains("scrapes now") || m.contains("stops scraping"));
                vm.failed.is_none() && last.is_some_and(|(_, m)| m.contains("scrapes now"))
            })
            .collect()
    }

    /// Runs a request through worker `worker`'s picker, the way Envoy's filter chain does:
    /// headers, then the body in chunks while the filter holds it, then upstream. The
    /// stream stays open until `finish`.
    pub fn request(&mut self, worker: usize, req: &HttpRequest) -> RequestOutcome {
        let allow_stop = self.config.allow_on_headers_stop_iteration;
        let limit = self.config.buffer_limit_bytes;
        let index = self.worker_vm(worker);
        let vm = &mut self.vms[index];
        let ctx = vm.new_context();
        let mut out = RequestOutcome { worker, context: ctx, ..Default::default() };
        let fuel_before = vm.total_fuel();
        let mut headers: HeaderMap = vec![
            (":method".into(), req.method.clone()),
            (":path".into(), req.path.clone()),
            (":authority".into(), "gateway".into()),
            (":scheme".into(), "http".into()),
        ];
        headers.extend(req.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())));
        if !req.body.is_empty() {
            headers.push(("content-length".into(), req.body.len().to_string()));
        }
        vm.state_mut().streams.insert(ctx, StreamState { request_headers: headers, ..Default::default() });

        let result = (|| -> Result<(), String> {
            vm.call("proxy_on_context_create", ctx, Phase::Root, &[ctx as i32, ROOT_CONTEXT as i32])?;
            let n = vm.state().streams[&ctx].request_headers.len() as i32;
            let eos = req.body.is_empty();
            let action = vm.call("proxy_on_request_headers", ctx, Phase::RequestHeaders, &[ctx as i32, n, eos as i32])?;
            if local_response(vm, ctx).is_some() {
                return Ok(());
            }
            let mut held = action != abi::ACTION_CONTINUE as i32;
            if held && !allow_stop && !eos {
                // Envoy without allow_on_headers_stop_iteration: the headers go on anyway.
                held = false;
            }
            if !held {
                release(vm, ctx, &mut out);
            }
            if eos {
                if held {
                    out.stuck = true;
                }
                return Ok(());
            }
            let chunk = if req.chunk == 0 { req.body.len() } else { req.chunk };
            let mut sent = 0;
            for piece in req.body.chunks(chunk.max(1)) {
                sent += piece.len();
                let last = sent == req.body.len();
                if let Some(st) = vm.state_mut().streams.get_mut(&ctx) {
                    st.request_body.extend_from_slice(piece);
                }
                let buffered = vm.state().streams[&ctx].request_body.len();
                if buffered > limit {
                    let st = vm.state_mut().streams.get_mut(&ctx).expect("stream");
                    st.local_response = Some(LocalResponse {
                        status: 413,
                        details: "request_payload_too_large".into(),
                        headers: vec![],
                        body: b"Payload Too Large".to_vec(),
                    });
                    return Ok(());
                }
                let action = vm.call("proxy_on_request_body", ctx, Phase::RequestBody, &[ctx as i32, buffered as i32, last as i32])?;
                if local_response(vm, ctx).is_some() {
                    return Ok(());
                }
                if action == abi::ACTION_CONTINUE as i32 && out.upstream_headers.is_none() {
                    release(vm, ctx, &mut out);
                }
            }
            if out.upstream_headers.is_none() {
                let resumed = vm.state().streams[&ctx].resumed;
                if resumed {
                    release(vm, ctx, &mut out);
                } else {
                    out.stuck = true;
                }
            }
            Ok(())
        })();
        if let Err(trap) = result {
            out.trap = Some(trap);
        }
        out.local_response = local_response(vm, ctx);
        if out.upstream_headers.is_some() {
            out.upstream_body = vm.state().streams.get(&ctx).map(|s| s.request_body.clone());
        }
        out.fuel = vm.total_fuel() - fuel_before;
        out
    }

    /// Ends a stream: the upstream's answer passes the filter, then done, log, delete.
    /// Returns the response headers as the client would see them.
    pub fn finish(&mut self, outcome: &RequestOutcome, status: u32) -> Option<HeaderMap> {
        let index = self.worker_vm(outcome.worker);
        let vm = &mut self.vms[index];
        let ctx = outcome.context;
        if outcome.trap.is_some() || vm.failed.is_some() {
            vm.state_mut().streams.remove(&ctx);
            return None;
        }
        let mut headers = None;
        if outcome.upstream_headers.is_some() {
            if let Some(st) = vm.state_mut().streams.get_mut(&ctx) {
                st.response_headers = Some(vec![(":status".into(), status.to_string()), ("content-type".into(), "application/json".into())]);
            }
            let n = 2;
            let _ = vm.call("proxy_on_response_headers", ctx, Phase::ResponseHeaders, &[ctx as i32, n, 1]);
            headers = vm.state().streams.get(&ctx).and_then(|s| s.response_headers.clone());
        }
        let _ = vm.call("proxy_on_done", ctx, Phase::StreamEnd, &[ctx as i32]);
        let _ = vm.call("proxy_on_log", ctx, Phase::StreamEnd, &[ctx as i32]);
        let _ = vm.call("proxy_on_delete", ctx, Phase::StreamEnd, &[ctx as i32]);
        vm.state_mut().streams.remove(&ctx);
        headers
    }

    /// Ticks every VM whose timer is due at `now_ns`.
    pub fn tick_due(&mut self, now_ns: u64) {
        for vm in &mut self.vms {
            let due = matches!(vm.state().next_tick_ns, Some(t) if t <= now_ns);
            if due && vm.failed.is_none() {
                let period = vm.state().tick_period_ms * 1_000_000;
                vm.state_mut().next_tick_ns = Some(now_ns + period.max(1));
                let _ = vm.call("proxy_on_tick", ROOT_CONTEXT, Phase::Root, &[ROOT_CONTEXT as i32]);
            }
        }
    }

    pub fn next_tick_ns(&self) -> Option<u64> {
        self.vms.iter().filter(|v| v.failed.is_none()).filter_map(|v| v.state().next_tick_ns).min()
    }

    /// Delivers an HTTP call's answer (`None`: it failed or timed out, as Envoy reports it:
    /// no headers, no body).
    pub fn answer_call(&mut self, call: &PendingCall, answer: Option<(HeaderMap, Vec<u8>)>) {
        let vm = &mut self.vms[call.vm];
        let (headers, body) = answer.unwrap_or_default();
        let (n, size) = (headers.len() as i32, body.len() as i32);
        vm.state_mut().call_answer = Some(crate::vm::CallAnswer { headers, body });
        let _ = vm.call(
            "proxy_on_http_call_response",
            call.context,
            Phase::HttpCallResponse,
            &[call.context as i32, call.token as i32, n, size, 0],
        );
        vm.state_mut().call_answer = None;
    }

    /// Calls `on_queue_ready` for queues that received items.
    pub fn deliver_queues(&mut self) {
        let ready = std::mem::take(&mut self.state.borrow_mut().ready_queues);
        for (vm, ctx, id) in ready {
            if let Some(vm) = self.vms.get_mut(vm) {
                let _ = vm.call("proxy_on_queue_ready", ctx, Phase::Root, &[ctx as i32, id as i32]);
            }
        }
    }

    pub fn take_dispatched(&mut self) -> Vec<PendingCall> {
        std::mem::take(&mut self.state.borrow_mut().dispatched)
    }

    /// Every trap so far, by VM.
    pub fn traps(&self) -> Vec<String> {
        self.vms.iter().filter_map(|v| v.failed.clone()).collect()
    }

    pub fn metric(&self, name: &str) -> i64 {
        self.state.borrow().metric_by_name(name)
    }
}

fn local_response(vm: &Vm, ctx: u32) -> Option<LocalResponse> {
    vm.state().streams.get(&ctx).and_then(|s| s.local_response.clone())
}

/// The request headers go upstream as they are now.
fn release(vm: &mut Vm, ctx: u32, out: &mut RequestOutcome) {
    out.upstream_headers = vm.state().streams.get(&ctx).map(|s| s.request_headers.clone());
}
