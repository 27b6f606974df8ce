//! One proxy-wasm VM: a wasmtime instance of the module with the host functions of
//! ABI 0.2.1 (and the WASI calls the Rust SDK needs), behaving as Envoy's host does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use wasmtime::error::Context as _;
use wasmtime::{format_err, Result};
use wasmtime::{Caller, Engine, Extern, Instance, Linker, Module, Store};

use crate::abi::{self, HeaderMap, Status};
use crate::proxy::{LocalResponse, PendingCall, ProxyState};

/// Fuel given to each callback; a callback that needs more is a runaway loop.
const FUEL_PER_CALL: u64 = 50_000_000_000;

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

/// One callback as observed: what it returned, what it cost.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub callback: &'static str,
    pub context: u32,
    pub fuel: u64,
    pub result: Result<i32, String>,
}

pub struct Vm {
    pub store: Store<HostState>,
    instance: Instance,
    /// Set when a callback trapped: Envoy stops using a failed VM.
    pub failed: Option<String>,
    pub reports: Vec<CallReport>,
    pub record: bool,
    pub next_context_id: u32,
    pub total_fuel: u64,
}

pub const ROOT_CONTEXT: u32 = 1;

impl Vm {
    pub fn new(engine: &Engine, module: &Module, state: HostState) -> Result<Vm> {
        let mut linker: Linker<HostState> = Linker::new(engine);
        define_host_functions(&mut linker)?;
        let mut store = Store::new(engine, state);
        // Whatever else the module imports fails loudly, naming itself, when called.
        for import in module.imports() {
            let (m, n) = (import.module().to_string(), import.name().to_string());
            if linker.get(&mut store, &m, &n).is_err() {
                if let wasmtime::ExternType::Func(ty) = import.ty() {
                    let name = format!("{m}.{n}");
                    linker.func_new(&m, &n, ty, move |_, _, _| {
                        Err(format_err!("host-sim does not implement the host function {name}"))
                    })?;
                }
            }
        }
        store.set_fuel(FUEL_PER_CALL)?;
        if profiling() {
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|ctx| {
                record_sample(&wasmtime::WasmBacktrace::capture(&ctx));
                Ok(wasmtime::UpdateDeadline::Continue(1))
            });
        }
        let instance = linker.instantiate(&mut store, module).context("instantiating the module")?;
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ()).context("_initialize")?;
        }
        instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .context("the module exports no proxy_on_memory_allocate: not a proxy-wasm module")?;
        Ok(Vm {
            store,
            instance,
            failed: None,
            reports: Vec::new(),
            record: false,
            next_context_id: ROOT_CONTEXT + 1,
            total_fuel: 0,
        })
    }

    pub fn state(&self) -> &HostState {
        self.store.data()
    }

    pub fn state_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// Linear memory size in bytes.
    pub fn memory_bytes(&mut self) -> usize {
        match self.instance.get_export(&mut self.store, "memory") {
            Some(Extern::Memory(m)) => m.data_size(&self.store),
            _ => 0,
        }
    }

    /// Calls an exported callback with i32 arguments. A trap marks the VM failed and is
    /// returned with the panic message the module logged, if any.
    pub fn call(&mut self, callback: &'static str, context: u32, phase: Phase, args: &[i32]) -> Result<i32, String> {
        if let Some(why) = &self.failed {
            return Err(format!("VM failed earlier: {why}"));
        }
        {
            let s = self.store.data_mut();
            s.current_context = context;
            s.phase = phase;
        }
        let logs_before = self.store.data().logs.len();
        let _ = self.store.set_fuel(FUEL_PER_CALL);
        if profiling() {
            // Time spent outside the module since the last call is not the module's.
            self.store.set_epoch_deadline(1);
        }
        let result = self.call_raw(callback, args);
        let fuel = FUEL_PER_CALL.saturating_sub(self.store.get_fuel().unwrap_or(0));
        self.total_fuel += fuel;
        let result = result.map_err(|e| {
            // The SDK's panic hook logs the panic at Critical level before the trap.
            let panic = self.store.data().logs[logs_before..]
                .iter()
                .rev()
                .find(|(level, m)| *level >= 5 || m.contains("panicked"))
                .map(|(_, m)| m.clone());
            let trap = format!("{e:#}");
            let why = match panic {
                Some(p) => format!("trap in {callback}: {p} ({})", first_line(&trap)),
                None => format!("trap in {callback}: {trap}"),
            };
            self.failed = Some(why.clone());
            why
        });
        if self.record {
            self.reports.push(CallReport { callback, context, fuel, result: result.clone() });
        }
        result
    }

    fn call_raw(&mut self, name: &str, args: &[i32]) -> Result<i32> {
        let f = self
            .instance
            .get_func(&mut self.store, name)
            .ok_or_else(|| format_err!("the module does not export {name}"))?;
        let params: Vec<wasmtime::Val> = args.iter().map(|&a| wasmtime::Val::I32(a)).collect();
        let n_results = f.ty(&self.store).results().len();
        let mut results = vec![wasmtime::Val::I32(0); n_results];
        f.call(&mut self.store, &params, &mut results)?;
        Ok(results.first().and_then(|v| v.i32()).unwrap_or(0))
    }

    pub fn new_context(&mut self) -> u32 {
        let id = self.next_context_id;
        self.next_context_id += 1;
        id
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

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

    fn cover(&self, name: &'static str) {
        *self.proxy.borrow_mut().coverage.entry(name).or_insert(0) += 1;
    }

    fn stream(&mut self) -> Option<&mut StreamState> {
        let ctx = self.current_context;
        self.streams.get_mut(&ctx)
    }

    fn now_ns(&self) -> u64 {
        self.proxy.borrow().clock.get()
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

// ---------------------------------------------------------------------------------------
// Memory helpers

fn memory(caller: &mut Caller<'_, HostState>) -> Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(format_err!("the module exports no memory")),
    }
}

fn read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = memory(caller).ok()?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    mem.data(&caller).get(ptr..ptr.checked_add(len)?).map(|s| s.to_vec())
}

fn read_str(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<String> {
    String::from_utf8(read(caller, ptr, len)?).ok()
}

fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> bool {
    let Ok(mem) = memory(caller) else { return false };
    mem.write(caller, ptr as u32 as usize, bytes).is_ok()
}

fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, v: u32) -> bool {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the module allocates, and writes the pointer and size where
/// the module asked: how every "return a buffer" host call works.
fn give(caller: &mut Caller<'_, HostState>, bytes: &[u8], ret_ptr: i32, ret_size: i32) -> Result<i32> {
    let ptr = if bytes.is_empty() {
        0
    } else {
        let alloc = match caller.get_export("proxy_on_memory_allocate") {
            Some(Extern::Func(f)) => f.typed::<i32, i32>(&caller)?,
            _ => return Err(format_err!("no proxy_on_memory_allocate")),
        };
        let ptr = alloc.call(&mut *caller, bytes.len() as i32)?;
        if ptr == 0 || !write(caller, ptr, bytes) {
            return Ok(Status::InternalFailure as i32);
        }
        ptr
    };
    if !write_u32(caller, ret_ptr, ptr as u32) || !write_u32(caller, ret_size, bytes.len() as u32) {
        return Ok(6); // InvalidMemoryAccess
    }
    Ok(Status::Ok as i32)
}

const INVALID_MEMORY: i32 = 6;

// ---------------------------------------------------------------------------------------
// Host functions

fn define_host_functions(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap("env", "proxy_log", |mut c: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| -> i32 {
        c.data().cover("proxy_log");
        let Some(msg) = read_str(&mut c, ptr, len) else { return INVALID_MEMORY };
        c.data_mut().logs.push((level as u32, msg));
        Status::Ok as i32
    })?;
    l.func_wrap("env", "proxy_get_log_level", |mut c: Caller<'_, HostState>, ret: i32| -> i32 {
        c.data().cover("proxy_get_log_level");
        let level = c.data().log_level;
        if write_u32(&mut c, ret, level) { 0 } else { INVALID_MEMORY }
    })?;
    l.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: Caller<'_, HostState>, ret: i32| -> i32 {
        c.data().cover("proxy_get_current_time_nanoseconds");
        let now = c.data().now_ns();
        if write(&mut c, ret, &now.to_le_bytes()) { 0 } else { INVALID_MEMORY }
    })?;
    l.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: Caller<'_, HostState>, ms: i32| -> i32 {
        c.data().cover("proxy_set_tick_period_milliseconds");
        let now = c.data().now_ns();
        let s = c.data_mut();
        s.tick_period_ms = ms as u32 as u64;
        s.next_tick_ns = (ms > 0).then(|| now + s.tick_period_ms * 1_000_000);
        0
    })?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            c.data().cover("proxy_get_buffer_bytes");
            let buffer: Option<Vec<u8>> = {
                let s = c.data_mut();
                match (kind as u32, s.phase) {
                    (abi::BUFFER_PLUGIN_CONFIGURATION, Phase::Configure) => Some(s.plugin_config.clone()),
                    (abi::BUFFER_VM_CONFIGURATION, Phase::VmStart) => Some(s.vm_config.clone()),
                    (abi::BUFFER_HTTP_CALL_RESPONSE_BODY, Phase::HttpCallResponse) => {
                        s.call_answer.as_ref().map(|a| a.body.clone())
                    }
                    (abi::BUFFER_REQUEST_BODY, _) => s.stream().map(|st| st.request_body.clone()),
                    (abi::BUFFER_RESPONSE_BODY, Phase::ResponseBody) => s.stream().map(|st| st.response_body.clone()),
                    _ => None,
                }
            };
            let Some(buffer) = buffer else { return Ok(Status::NotFound as i32) };
            let start = (start as u32 as usize).min(buffer.len());
            let end = start.saturating_add(max as u32 as usize).min(buffer.len());
            give(&mut c, &buffer[start..end], ret_ptr, ret_size)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_, HostState>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
            c.data().cover("proxy_set_buffer_bytes");
            let Some(data) = read(&mut c, ptr, len) else { return INVALID_MEMORY };
            let s = c.data_mut();
            let Some(st) = s.stream() else { return Status::NotFound as i32 };
            let buf = match kind as u32 {
                abi::BUFFER_REQUEST_BODY => &mut st.request_body,
                abi::BUFFER_RESPONSE_BODY => &mut st.response_body,
                _ => return Status::BadArgument as i32,
            };
            // Envoy: (0, len) replaces from the start; start == len appends.
            let start = (start as u32 as usize).min(buf.len());
            let end = start.saturating_add(size as u32 as usize).min(buf.len());
            buf.splice(start..end, data);
            0
        },
    )?;
    l.func_wrap("env", "proxy_get_header_map_pairs", |mut c: Caller<'_, HostState>, map: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
        c.data().cover("proxy_get_header_map_pairs");
        let Some(m) = with_map(c.data_mut(), map, |m| m.clone()) else { return Ok(Status::BadArgument as i32) };
        give(&mut c, &abi::serialize_map(&m), ret_ptr, ret_size)
    })?;
    l.func_wrap("env", "proxy_set_header_map_pairs", |mut c: Caller<'_, HostState>, map: i32, ptr: i32, len: i32| -> i32 {
        c.data().cover("proxy_set_header_map_pairs");
        let Some(bytes) = read(&mut c, ptr, len) else { return INVALID_MEMORY };
        let Some(pairs) = abi::deserialize_map(&bytes) else { return Status::BadArgument as i32 };
        match with_map(c.data_mut(), map, |m| *m = pairs) {
            Some(()) => 0,
            None => Status::BadArgument as i32,
        }
    })?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>, map: i32, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            c.data().cover("proxy_get_header_map_value");
            let Some(key) = read_str(&mut c, kp, kl) else { return Ok(INVALID_MEMORY) };
            let key = key.to_ascii_lowercase();
            let found = with_map(c.data_mut(), map, |m| m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()));
            match found {
                None => Ok(Status::BadArgument as i32),
                Some(None) => Ok(Status::NotFound as i32),
                Some(Some(v)) => give(&mut c, v.as_bytes(), ret_ptr, ret_size),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, HostState>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            c.data().cover("proxy_replace_header_map_value");
            let (Some(k), Some(v)) = (read_str(&mut c, kp, kl), read_str(&mut c, vp, vl)) else { return INVALID_MEMORY };
            let k = k.to_ascii_lowercase();
            let r = with_map(c.data_mut(), map, |m| {
                m.retain(|(name, _)| *name != k);
                m.push((k.clone(), v.clone()));
            });
            if r.is_some() { 0 } else { Status::BadArgument as i32 }
        },
    )?;
    l.func_wrap("env", "proxy_remove_header_map_value", |mut c: Caller<'_, HostState>, map: i32, kp: i32, kl: i32| -> i32 {
        c.data().cover("proxy_remove_header_map_value");
        let Some(k) = read_str(&mut c, kp, kl) else { return INVALID_MEMORY };
        let k = k.to_ascii_lowercase();
        match with_map(c.data_mut(), map, |m| m.retain(|(name, _)| *name != k)) {
            Some(()) => 0,
            None => Status::BadArgument as i32,
        }
    })?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_, HostState>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            c.data().cover("proxy_add_header_map_value");
            let (Some(k), Some(v)) = (read_str(&mut c, kp, kl), read_str(&mut c, vp, vl)) else { return INVALID_MEMORY };
            match with_map(c.data_mut(), map, |m| m.push((k.to_ascii_lowercase(), v.clone()))) {
                Some(()) => 0,
                None => Status::BadArgument as i32,
            }
        },
    )?;
    l.func_wrap("env", "proxy_get_property", |mut c: Caller<'_, HostState>, pp: i32, pl: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
        c.data().cover("proxy_get_property");
        let Some(path) = read(&mut c, pp, pl) else { return Ok(INVALID_MEMORY) };
        let key = path.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(".");
        let s = c.data();
        let value = match key.as_str() {
            "plugin_root_id" => Some(s.root_id.as_bytes().to_vec()),
            "plugin_name" => Some(s.plugin_name.as_bytes().to_vec()),
            "plugin_vm_id" => Some(s.vm_id.as_bytes().to_vec()),
            other => s.properties.get(other).cloned(),
        };
        match value {
            Some(v) => give(&mut c, &v, ret_ptr, ret_size),
            None => Ok(Status::NotFound as i32),
        }
    })?;
    l.func_wrap("env", "proxy_set_property", |mut c: Caller<'_, HostState>, pp: i32, pl: i32, vp: i32, vl: i32| -> i32 {
        c.data().cover("proxy_set_property");
        let (Some(path), Some(v)) = (read(&mut c, pp, pl), read(&mut c, vp, vl)) else { return INVALID_MEMORY };
        let key = path.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(".");
        c.data_mut().properties.insert(key, v);
        0
    })?;
    l.func_wrap("env", "proxy_get_shared_data", |mut c: Caller<'_, HostState>, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32, ret_cas: i32| -> Result<i32> {
        c.data().cover("proxy_get_shared_data");
        let Some(key) = read_str(&mut c, kp, kl) else { return Ok(INVALID_MEMORY) };
        let entry = c.data().proxy.borrow().shared_data.get(&key).cloned();
        let Some((value, cas)) = entry else { return Ok(Status::NotFound as i32) };
        let status = give(&mut c, &value, ret_ptr, ret_size)?;
        if status == 0 && !write_u32(&mut c, ret_cas, cas) {
            return Ok(INVALID_MEMORY);
        }
        Ok(status)
    })?;
    l.func_wrap("env", "proxy_set_shared_data", |mut c: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> i32 {
        c.data().cover("proxy_set_shared_data");
        let (Some(key), Some(value)) = (read_str(&mut c, kp, kl), read(&mut c, vp, vl)) else { return INVALID_MEMORY };
        c.data().proxy.borrow_mut().set_shared_data(key, value, cas as u32) as i32
    })?;
    l.func_wrap("env", "proxy_register_shared_queue", |mut c: Caller<'_, HostState>, np: i32, nl: i32, ret: i32| -> i32 {
        c.data().cover("proxy_register_shared_queue");
        let Some(name) = read_str(&mut c, np, nl) else { return INVALID_MEMORY };
        let (vm, vm_id, ctx) = (c.data().vm_index, c.data().vm_id.clone(), c.data().current_context);
        let id = c.data().proxy.borrow_mut().register_queue(&vm_id, &name, vm, ctx);
        if write_u32(&mut c, ret, id) { 0 } else { INVALID_MEMORY }
    })?;
    l.func_wrap("env", "proxy_resolve_shared_queue", |mut c: Caller<'_, HostState>, vp: i32, vl: i32, np: i32, nl: i32, ret: i32| -> i32 {
        c.data().cover("proxy_resolve_shared_queue");
        let (Some(vm_id), Some(name)) = (read_str(&mut c, vp, vl), read_str(&mut c, np, nl)) else { return INVALID_MEMORY };
        let id = c.data().proxy.borrow().resolve_queue(&vm_id, &name);
        match id {
            Some(id) => if write_u32(&mut c, ret, id) { 0 } else { INVALID_MEMORY },
            None => Status::NotFound as i32,
        }
    })?;
    l.func_wrap("env", "proxy_enqueue_shared_queue", |mut c: Caller<'_, HostState>, id: i32, vp: i32, vl: i32| -> i32 {
        c.data().cover("proxy_enqueue_shared_queue");
        let Some(v) = read(&mut c, vp, vl) else { return INVALID_MEMORY };
        c.data().proxy.borrow_mut().enqueue(id as u32, v) as i32
    })?;
    l.func_wrap("env", "proxy_dequeue_shared_queue", |mut c: Caller<'_, HostState>, id: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
        c.data().cover("proxy_dequeue_shared_queue");
        let item = c.data().proxy.borrow_mut().dequeue(id as u32);
        match item {
            Ok(v) => give(&mut c, &v, ret_ptr, ret_size),
            Err(status) => Ok(status as i32),
        }
    })?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, HostState>, status: i32, dp: i32, dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, _grpc: i32| -> i32 {
            c.data().cover("proxy_send_local_response");
            let (Some(details), Some(body), Some(headers)) = (read_str(&mut c, dp, dl), read(&mut c, bp, bl), read(&mut c, hp, hl)) else {
                return INVALID_MEMORY;
            };
            let Some(headers) = abi::deserialize_map(&headers) else { return Status::BadArgument as i32 };
            let Some(st) = c.data_mut().stream() else { return Status::BadArgument as i32 };
            st.local_response = Some(LocalResponse { status: status as u32, details, headers, body });
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_, HostState>, up: i32, ul: i32, hp: i32, hl: i32, bp: i32, bl: i32, tp: i32, tl: i32, timeout: i32, ret: i32| -> i32 {
            c.data().cover("proxy_http_call");
            let (Some(cluster), Some(headers), Some(body), Some(trailers)) =
                (read_str(&mut c, up, ul), read(&mut c, hp, hl), read(&mut c, bp, bl), read(&mut c, tp, tl))
            else {
                return INVALID_MEMORY;
            };
            let (Some(headers), Some(_trailers)) = (abi::deserialize_map(&headers), abi::deserialize_map(&trailers).or(Some(vec![])))
            else {
                return Status::BadArgument as i32;
            };
            // Envoy refuses a call to an unknown cluster, or without these headers.
            let has = |name: &str| headers.iter().any(|(k, v)| k == name && !v.is_empty());
            if !(has(":method") && has(":path") && has(":authority")) {
                return Status::BadArgument as i32;
            }
            let (vm, ctx, now) = (c.data().vm_index, c.data().current_context, c.data().now_ns());
            let token = {
                let mut p = c.data().proxy.borrow_mut();
                if !p.clusters.contains(&cluster) {
                    return Status::BadArgument as i32;
                }
                p.dispatch(PendingCall {
                    vm,
                    context: ctx,
                    token: 0,
                    cluster,
                    headers,
                    body,
                    timeout_ms: timeout as u32 as u64,
                    issued_ns: now,
                })
            };
            if write_u32(&mut c, ret, token) { 0 } else { INVALID_MEMORY }
        },
    )?;
    l.func_wrap("env", "proxy_set_effective_context", |mut c: Caller<'_, HostState>, ctx: i32| -> i32 {
        c.data().cover("proxy_set_effective_context");
        let s = c.data_mut();
        let ctx = ctx as u32;
        if ctx == ROOT_CONTEXT || s.streams.contains_key(&ctx) {
            s.current_context = ctx;
            0
        } else {
            Status::BadArgument as i32
        }
    })?;
    l.func_wrap("env", "proxy_done", |c: Caller<'_, HostState>| -> i32 {
        c.data().cover("proxy_done");
        0
    })?;
    l.func_wrap("env", "proxy_continue_stream", |mut c: Caller<'_, HostState>, _stream: i32| -> i32 {
        c.data().cover("proxy_continue_stream");
        match c.data_mut().stream() {
            Some(st) => {
                st.resumed = true;
                0
            }
            None => Status::NotFound as i32,
        }
    })?;
    l.func_wrap("env", "proxy_close_stream", |mut c: Caller<'_, HostState>, _stream: i32| -> i32 {
        c.data().cover("proxy_close_stream");
        match c.data_mut().stream() {
            Some(st) => {
                st.closed = true;
                0
            }
            None => Status::NotFound as i32,
        }
    })?;
    l.func_wrap("env", "proxy_get_status", |mut c: Caller<'_, HostState>, code: i32, mp: i32, ml: i32| -> Result<i32> {
        c.data().cover("proxy_get_status");
        if !write_u32(&mut c, code, 0) {
            return Ok(INVALID_MEMORY);
        }
        give(&mut c, b"", mp, ml)
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: Caller<'_, HostState>, np: i32, nl: i32, _ap: i32, _al: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            c.data().cover("proxy_call_foreign_function");
            let Some(name) = read_str(&mut c, np, nl) else { return Ok(INVALID_MEMORY) };
            match name.as_str() {
                // Envoy's: recompute the route after header changes. Nothing to recompute here.
                "clear_route_cache" => give(&mut c, b"", ret_ptr, ret_size),
                other => {
                    c.data_mut().host_errors.push(format!("unknown foreign function {other:?}"));
                    Ok(Status::NotFound as i32)
                }
            }
        },
    )?;
    l.func_wrap("env", "proxy_define_metric", |mut c: Caller<'_, HostState>, kind: i32, np: i32, nl: i32, ret: i32| -> i32 {
        c.data().cover("proxy_define_metric");
        let Some(name) = read_str(&mut c, np, nl) else { return INVALID_MEMORY };
        let id = c.data().proxy.borrow_mut().define_metric(kind as u32, &name);
        if write_u32(&mut c, ret, id) { 0 } else { INVALID_MEMORY }
    })?;
    l.func_wrap("env", "proxy_increment_metric", |c: Caller<'_, HostState>, id: i32, offset: i64| -> i32 {
        c.data().cover("proxy_increment_metric");
        c.data().proxy.borrow_mut().update_metric(id as u32, |v| *v += offset) as i32
    })?;
    l.func_wrap("env", "proxy_record_metric", |c: Caller<'_, HostState>, id: i32, value: i64| -> i32 {
        c.data().cover("proxy_record_metric");
        c.data().proxy.borrow_mut().update_metric(id as u32, |v| *v = value) as i32
    })?;
    l.func_wrap("env", "proxy_get_metric", |mut c: Caller<'_, HostState>, id: i32, ret: i32| -> i32 {
        c.data().cover("proxy_get_metric");
        let value = c.data().proxy.borrow().metric(id as u32);
        match value {
            Some(v) => if write(&mut c, ret, &(v as u64).to_le_bytes()) { 0 } else { INVALID_MEMORY },
            None => Status::NotFound as i32,
        }
    })?;

    // WASI preview1, the few calls Rust's std makes under proxy-wasm.
    let w = "wasi_snapshot_preview1";
    l.func_wrap(w, "fd_write", |mut c: Caller<'_, HostState>, fd: i32, iovs: i32, n: i32, ret: i32| -> i32 {
        c.data().cover("fd_write");
        let mut total = 0u32;
        let mut text = Vec::new();
        for i in 0..n {
            let Some(iov) = read(&mut c, iovs + 8 * i, 8) else { return 21 }; // EFAULT
            let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
            let Some(bytes) = read(&mut c, ptr, len) else { return 21 };
            total += bytes.len() as u32;
            text.extend(bytes);
        }
        let level = if fd == 2 { 4 } else { 2 };
        c.data_mut().logs.push((level, String::from_utf8_lossy(&text).into_owned()));
        if write_u32(&mut c, ret, total) { 0 } else { 21 }
    })?;
    l.func_wrap(w, "environ_sizes_get", |mut c: Caller<'_, HostState>, count: i32, size: i32| -> i32 {
        c.data().cover("environ_sizes_get");
        if write_u32(&mut c, count, 0) && write_u32(&mut c, size, 0) { 0 } else { 21 }
    })?;
    l.func_wrap(w, "environ_get", |c: Caller<'_, HostState>, _a: i32, _b: i32| -> i32 {
        c.data().cover("environ_get");
        0
    })?;
    l.func_wrap(w, "args_sizes_get", |mut c: Caller<'_, HostState>, count: i32, size: i32| -> i32 {
        c.data().cover("args_sizes_get");
        if write_u32(&mut c, count, 0) && write_u32(&mut c, size, 0) { 0 } else { 21 }
    })?;
    l.func_wrap(w, "args_get", |c: Caller<'_, HostState>, _a: i32, _b: i32| -> i32 {
        c.data().cover("args_get");
        0
    })?;
    l.func_wrap(w, "clock_time_get", |mut c: Caller<'_, HostState>, _id: i32, _precision: i64, ret: i32| -> i32 {
        c.data().cover("clock_time_get");
        let now = c.data().now_ns();
        if write(&mut c, ret, &now.to_le_bytes()) { 0 } else { 21 }
    })?;
    l.func_wrap(w, "random_get", |mut c: Caller<'_, HostState>, ptr: i32, len: i32| -> i32 {
        c.data().cover("random_get");
        // Seeded, so a scenario replays exactly.
        let bytes: Vec<u8> = (0..len).map(|_| c.data_mut().next_random() as u8).collect();
        if write(&mut c, ptr, &bytes) { 0 } else { 21 }
    })?;
    l.func_wrap(w, "proc_exit", |c: Caller<'_, HostState>, code: i32| -> Result<()> {
        c.data().cover("proc_exit");
        Err(format_err!("the module called proc_exit({code})"))
    })?;
    Ok(())
}

/// The header map `map` of the current context, if this callback may touch it.
fn with_map<T>(s: &mut HostState, map: i32, f: impl FnOnce(&mut HeaderMap) -> T) -> Option<T> {
    let phase = s.phase;
    match map as u32 {
        abi::MAP_HTTP_CALL_RESPONSE_HEADERS if phase == Phase::HttpCallResponse => {
            s.call_answer.as_mut().map(|a| f(&mut a.headers))
        }
        abi::MAP_HTTP_CALL_RESPONSE_TRAILERS if phase == Phase::HttpCallResponse => Some(f(&mut Vec::new())),
        abi::MAP_REQUEST_HEADERS => s.stream().map(|st| f(&mut st.request_headers)),
        abi::MAP_REQUEST_TRAILERS => s.stream().map(|st| f(&mut st.request_trailers)),
        abi::MAP_RESPONSE_HEADERS => s.stream().and_then(|st| st.response_headers.as_mut()).map(f),
        abi::MAP_RESPONSE_TRAILERS => s.stream().map(|_| f(&mut Vec::new())),
        _ => None,
    }
}

/// The sampling profiler: off unless `start_profiling` is called before the first module
/// is loaded. A thread ticks wasmtime's epoch; at each tick a running VM records its wasm
/// stack. Time in host functions is counted at the next wasm frame that checks the epoch.
static PROFILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static PROFILE: std::sync::Mutex<std::collections::BTreeMap<String, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

pub fn start_profiling() {
    PROFILING.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn profiling() -> bool {
    PROFILING.load(std::sync::atomic::Ordering::Relaxed)
}

fn record_sample(bt: &wasmtime::WasmBacktrace) {
    let stack: Vec<String> = bt
        .frames()
        .iter()
        .rev()
        .map(|f| match f.func_name() {
            // `;` separates frames in the folded format; Rust names can hold one (`[u8; 4]`).
            Some(name) => format!("{:#}", rustc_demangle::demangle(name)).replace(';', ","),
            None => format!("wasm-function[{}]", f.func_index()),
        })
        .collect();
    let mut p = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
    *p.entry(stack.join(";")).or_insert(0) += 1;
}

/// The samples so far as folded stacks, one `outer;…;inner count` a line.
pub fn folded_profile() -> String {
    let p = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
    p.iter().map(|(stack, n)| format!("{stack} {n}\n")).collect()
}
