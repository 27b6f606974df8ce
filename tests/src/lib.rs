//! The harness shared by the integration tests and the demo: paths of the built
//! artifacts, simulated model servers and a real Envoy as child processes, an HTTP client.

pub mod client;
pub mod envoy;
pub mod extproc;
pub mod hostsim;
pub mod paths;
pub mod perf;
pub mod real_envoy;
pub mod sim;
pub mod soak;

pub use client::{Client, Reply};
pub use envoy::{Envoy, EnvoyOptions};
pub use sim::Sim;

use std::time::{Duration, Instant};

/// The base model every simulated server serves unless told otherwise (model-sim's default).
pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Polls `probe` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
