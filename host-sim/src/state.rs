//! What the host keeps for one simulated proxy, below its VMs: the shared data and queues
//! every VM of the proxy sees, the calls they dispatched, and the names of the clusters
//! the host answers for. The VMs (`vm`) and the proxy around them (`proxy`) both use it.

use std::cell::Cell;
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

