//! wasm-epp: an LLM endpoint picker that runs inside the proxy.
//!
//! The pure core (parsers, the metrics table, the scheduler, the scraper's state) is
//! free of proxy-wasm calls and tested natively and as wasm32; `abi` is the thin glue
//! that binds it to the host.

pub mod affinity;
pub mod config;
pub mod discovery;
pub mod engine;
pub mod errors;
pub mod in_flight;
pub mod lease;
pub mod models;
pub mod names;
pub mod peer;
pub mod prefix;
pub mod prom;
pub mod request;
pub mod rewrite;
pub mod rng;
pub mod route;
pub mod scheduler;
pub mod scrape;
pub mod shared;
pub mod stats;
pub mod table;

#[cfg(feature = "abi")]
mod abi;
