//! What the host keeps, below the VMs: per proxy, the shared data and queues every VM of
//! it sees, the calls they dispatched, and the names of the clusters the host answers
//! for; per VM, its `HostState` (streams, phase, logs), which the host functions
//! (`hostcalls`) read and write.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use crate::abi::{HeaderMap, Status};

/// The cluster whose hosts are every proxy of the world (a headless Service of the
/// gateway's pods, say), balanced round robin, as `peer_cluster` names it.
pub const PEER_CLUSTER: &str = "wasm_epp_peers";
/// The model servers' cluster, as `pool_cluster` names it.
pub const POOL_CLUSTER: &str = "llm_pool";
/// The cluster that reaches a proxy's own admin interface: host-sim answers
/// `/clusters?format=json` with the fleet's membership (`Fleet::pool`).
pub const ADMIN_CLUSTER: &str = "wasm_epp_admin";

#[derive(Debug, Clone, PartialEq)]
pub struct LocalResponse {
    pub status: u32,
    pub details: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// An HTTP call the module dispatched, waiting for the world to answer it.
#[derive(Debug, Clone)]
pub struct PendingCall {
    pub vm: usize,
    pub context: u32,
    pub token: u32,
    pub cluster: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
    pub issued_ns: u64,
}

struct Queue {
    vm_id: String,
    name: String,
    owner: (usize, u32),
    items: VecDeque<Vec<u8>>,
}

/// What every VM of one proxy shares.
pub struct ProxyState {
    pub clock: Rc<Cell<u64>>,
    pub shared_data: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    queues: Vec<Queue>,
    /// Queues with new items: (owner vm, owner context, queue id).
    pub ready_queues: Vec<(usize, u32, u32)>,
    pub metrics: Vec<(String, u32, i64)>,
    pub clusters: Vec<String>,
    pub dispatched: Vec<PendingCall>,
    next_token: u32,
    /// Host functions called, and how often: which parts of the host a scenario touched.
    pub coverage: BTreeMap<&'static str, u64>,
}

impl ProxyState {
    pub fn new(clock: Rc<Cell<u64>>, clusters: Vec<String>) -> Self {
        ProxyState {
            clock,
            shared_data: HashMap::new(),
            next_cas: 1,
            queues: Vec::new(),
            ready_queues: Vec::new(),
            metrics: Vec::new(),
            clusters,
            dispatched: Vec::new(),
            next_token: 1,
            coverage: BTreeMap::new(),
        }
    }

    /// Envoy's semantics: a non-zero `cas` must match the entry's, else CasMismatch; every
    /// write gives the entry a new CAS.
    pub fn set_shared_data(&mut self, key: String, value: Vec<u8>, cas: u32) -> Status {
        if let Some((_, current)) = self.shared_data.get(&key) {
            if cas != 0 && cas != *current {
                return Status::CasMismatch;
            }
        }
        let new_cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.shared_data.insert(key, (value, new_cas));
        Status::Ok
    }

    /// The last registrant of a name owns the queue (and gets `on_queue_ready`).
    pub fn register_queue(&mut self, vm_id: &str, name: &str, vm: usize, context: u32) -> u32 {
        if let Some(i) = self.queues.iter().position(|q| q.vm_id == vm_id && q.name == name) {
            self.queues[i].owner = (vm, context);
            return i as u32 + 1;
        }
        self.queues.push(Queue { vm_id: vm_id.into(), name: name.into(), owner: (vm, context), items: VecDeque::new() });
        self.queues.len() as u32
    }

    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queues.iter().position(|q| q.vm_id == vm_id && q.name == name).map(|i| i as u32 + 1)
    }

    pub fn enqueue(&mut self, id: u32, item: Vec<u8>) -> Status {
        let Some(q) = self.queues.get_mut((id as usize).wrapping_sub(1)) else { return Status::NotFound };
        q.items.push_back(item);
        let (vm, ctx) = q.owner;
        self.ready_queues.push((vm, ctx, id));
        Status::Ok
    }

    pub fn dequeue(&mut self, id: u32) -> Result<Vec<u8>, Status> {
        let q = self.queues.get_mut((id as usize).wrapping_sub(1)).ok_or(Status::NotFound)?;
        q.items.pop_front().ok_or(Status::Empty)
    }

    pub fn define_metric(&mut self, kind: u32, name: &str) -> u32 {
        if let Some(i) = self.metrics.iter().position(|(n, _, _)| n == name) {
            return i as u32 + 1;
        }
        self.metrics.push((name.to_string(), kind, 0));
        self.metrics.len() as u32
    }

    pub fn update_metric(&mut self, id: u32, f: impl FnOnce(&mut i64)) -> Status {
        match self.metrics.get_mut((id as usize).wrapping_sub(1)) {
            Some((_, _, v)) => {
                f(v);
                Status::Ok
            }
            None => Status::NotFound,
        }
    }

    pub fn metric(&self, id: u32) -> Option<i64> {
        self.metrics.get((id as usize).wrapping_sub(1)).map(|(_, _, v)| *v)
    }

    pub fn metric_by_name(&self, name: &str) -> i64 {
        self.metrics.iter().find(|(n, _, _)| n == name).map_or(0, |(_, _, v)| *v)
    }

    pub fn dispatch(&mut self, mut call: PendingCall) -> u32 {
        call.token = self.next_token;
        self.next_token += 1;
        let token = call.token;
        self.dispatched.push(call);
        token
    }
}

/// What one HTTP stream has, as the host holds it.
#[derive(Debug, Default, Clone)]
pub struct StreamState {
    pub request_headers: HeaderMap,
    pub request_body: Vec<u8>,
    pub request_trailers: HeaderMap,
    pub response_headers: Option<HeaderMap>,
    pub response_body: Vec<u8>,
    pub local_response: Option<LocalResponse>,
    /// `proxy_continue_stream` / `proxy_close_stream` were called.
    pub resumed: bool,
    pub closed: bool,
}

/// The answer to an HTTP call while `proxy_on_http_call_response` runs.
#[derive(Debug, Default, Clone)]
pub struct CallAnswer {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A VM's host-side state (wasmtime `Store` data).
pub struct HostState {
    pub proxy: Rc<RefCell<ProxyState>>,
    pub vm_index: usize,
    pub root_id: String,
    pub plugin_name: String,
    pub vm_id: String,
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    pub properties: HashMap<String, Vec<u8>>,
    pub log_level: u32,
    pub tick_period_ms: u64,
    pub next_tick_ns: Option<u64>,
    pub logs: Vec<(u32, String)>,
    pub streams: HashMap<u32, StreamState>,
    pub call_answer: Option<CallAnswer>,
    /// The context the current callback is for (changed by `proxy_set_effective_context`).
    pub current_context: u32,
    /// Which buffers and maps the current callback may touch.
    pub phase: Phase,
    /// Calls the host refused for being unimplemented or out of phase, for the report.
    pub host_errors: Vec<String>,
    rng: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    VmStart,
    Configure,
    Root,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    StreamEnd,
    HttpCallResponse,
}

pub const ROOT_CONTEXT: u32 = 1;

impl HostState {
    pub fn new(proxy: Rc<RefCell<ProxyState>>, vm_index: usize, root_id: &str, plugin_name: &str, vm_id: &str, plugin_config: &[u8], seed: u64) -> Self {
        HostState {
            proxy,
            vm_index,
            root_id: root_id.to_string(),
            plugin_name: plugin_name.to_string(),
            vm_id: vm_id.to_string(),
            plugin_config: plugin_config.to_vec(),
            vm_config: Vec::new(),
            properties: HashMap::new(),
            log_level: 2,
            tick_period_ms: 0,
            next_tick_ns: None,
            logs: Vec::new(),
            streams: HashMap::new(),
            call_answer: None,
            current_context: ROOT_CONTEXT,
            phase: Phase::Root,
            host_errors: Vec::new(),
            // Spread the seed (splitmix64) so neighbouring seeds give unrelated streams, and
            // keep xorshift's state non-zero.
            rng: {
                let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) | 1
            },
        }
    }

    pub(crate) fn cover(&self, name: &'static str) {
        *self.proxy.borrow_mut().coverage.entry(name).or_insert(0) += 1;
    }

    pub(crate) fn stream(&mut self) -> Option<&mut StreamState> {
        let ctx = self.current_context;
        self.streams.get_mut(&ctx)
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.proxy.borrow().clock.get()
    }

    pub(crate) fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}
