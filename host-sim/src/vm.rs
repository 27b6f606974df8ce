//! One proxy-wasm VM: a wasmtime instance of the module with the host functions of
//! ABI 0.2.1 (and the WASI calls the Rust SDK needs), behaving as Envoy's host does.

use wasmtime::error::Context as _;
use wasmtime::{format_err, Result};
use wasmtime::{Engine, Extern, Instance, Linker, Module, Store};

pub use crate::state::{CallAnswer, HostState, Phase, StreamState, ROOT_CONTEXT};

use crate::fuel::{self, PER_CALL as FUEL_PER_CALL};

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
    /// Calls and wasm instructions by callback: where a request's instructions go.
    pub fuel_by_callback: std::collections::BTreeMap<&'static str, (u64, u64)>,
}

impl Vm {
    /// Wasm instructions run so far, every callback's.
    pub fn total_fuel(&self) -> u64 {
        self.fuel_by_callback.values().map(|&(_, fuel)| fuel).sum()
    }

    pub fn new(engine: &Engine, module: &Module, state: HostState) -> Result<Vm> {
        let mut linker: Linker<HostState> = Linker::new(engine);
        crate::hostcalls::define(&mut linker)?;
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
            fuel_by_callback: Default::default(),
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
    /// returned with the panic message the module logged, if any. A callback the module
    /// does not export is skipped, as Envoy skips it, with the answer Envoy assumes then.
    pub fn call(&mut self, callback: &'static str, context: u32, phase: Phase, args: &[i32]) -> Result<i32, String> {
        if let Some(why) = &self.failed {
            return Err(format!("VM failed earlier: {why}"));
        }
        let Some(f) = self.instance.get_func(&mut self.store, callback) else {
            return Ok(unexported_answer(callback));
        };
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
        let result = self.call_func(f, args);
        let used = fuel::used(self.store.get_fuel().unwrap_or(0));
        fuel::note(callback, used);
        let tally = self.fuel_by_callback.entry(callback).or_default();
        *tally = (tally.0 + 1, tally.1 + used);
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
            self.reports.push(CallReport { callback, context, fuel: used, result: result.clone() });
        }
        result
    }

    fn call_func(&mut self, f: wasmtime::Func, args: &[i32]) -> Result<i32> {
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

// ---------------------------------------------------------------------------------------
// Memory helpers

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

/// What the host takes a callback the module does not export to have answered: done and
/// configured, and `Continue` for a stream's events.
fn unexported_answer(callback: &str) -> i32 {
    match callback {
        "proxy_on_done" | "proxy_on_vm_start" | "proxy_on_configure" => 1,
        _ => 0,
    }
}
