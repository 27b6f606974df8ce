//! host-sim: a native proxy-wasm host that loads the real `dist/epp.wasm` and runs it as
//! Envoy does (a singleton scraper VM, N worker picker VMs sharing one vm_id's shared data,
//! timers, HTTP calls), on a virtual clock with simulated model servers.

pub mod abi;
pub mod bench;
pub mod convert;
pub mod fleet;
pub mod fuel;
mod hostcalls;
pub mod proxy;
pub mod state;
pub mod vm;
pub mod world;

pub use fleet::{Fault, Fleet, SimServer};
pub use proxy::{HttpRequest, Proxy, ProxyConfig, RequestOutcome};
pub use state::LocalResponse;
pub use world::World;
pub use wasmtime;
