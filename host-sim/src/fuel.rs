//! Wasm instructions, as wasmtime's fuel counts them: each callback's budget, and the
//! trace that splits a request's instructions between its host calls
//! (`host-sim --trace-fuel N`). Deterministic, where the sampling profiler is not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Fuel given to each callback; a callback that needs more is a runaway loop.
pub const PER_CALL: u64 = 50_000_000_000;

static TRACING: AtomicBool = AtomicBool::new(false);
static TRACE: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());

/// Notes every callback and host call from now on, with the instructions its callback had
/// run by then.
pub fn start_trace() {
    TRACE.lock().unwrap_or_else(|e| e.into_inner()).clear();
    TRACING.store(true, Ordering::Relaxed);
}

/// Stops the trace and gives what it noted: (callback or host call, instructions its
/// callback had run), a callback's own line carrying its total.
pub fn take_trace() -> Vec<(&'static str, u64)> {
    TRACING.store(false, Ordering::Relaxed);
    std::mem::take(&mut *TRACE.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Whether the trace is on: every host call asks, so the answer is an atomic load.
pub(crate) fn tracing() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Notes a callback or host call that had run `used` instructions, if the trace is on.
pub(crate) fn note(what: &'static str, used: u64) {
    if tracing() {
        TRACE.lock().unwrap_or_else(|e| e.into_inner()).push((what, used));
    }
}

/// The instructions a callback has run, from the fuel it has left.
pub(crate) fn used(remaining: u64) -> u64 {
    PER_CALL.saturating_sub(remaining)
}
