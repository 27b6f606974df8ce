//! wasm-epp: an LLM endpoint picker that runs inside the proxy.
//!
//! The pure core (parsers, the metrics table, the scheduler, the scraper's state) is
//! free of proxy-wasm calls and tested natively and as wasm32; `abi` is the thin glue
//! that binds it to the host.

pub mod prefix_record;
pub mod cadence;
pub mod config;
pub mod discovery;
pub mod engine;
pub mod errors;
pub mod header_map;
pub mod in_flight;
pub mod json;
pub mod lease;
pub mod models;
pub mod names;
pub mod peer;
pub mod prefix;
pub mod prom;
pub mod rendezvous;
pub mod request;
pub mod rewrite;
pub mod rng;
pub mod route;
pub mod scheduler;
pub mod scrape;
pub mod store;
pub mod stats;
pub mod table;

#[cfg(feature = "abi")]
mod abi;

// The unit tests' `#[test]` (`use crate::test;` in each test module): wasm-bindgen-test's
// where they run as wasm32, the built-in one natively.
#[cfg(all(test, target_arch = "wasm32"))]
use wasm_bindgen_test::wasm_bindgen_test as test;
#[cfg(all(test, not(target_arch = "wasm32")))]
use core::prelude::v1::test;
