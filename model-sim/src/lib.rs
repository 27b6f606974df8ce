//! The model of a vLLM server, in virtual time, and what it shows on `/metrics`.
//!
//! `engine` is a deterministic step machine with no clock of its own: the HTTP simulator
//! (`main.rs`) drives it in real time, and a virtual-time fleet drives it as fast as it
//! can. Both see the same queueing, KV-cache pressure, LoRA slots and latencies.

pub mod engine;
pub mod kv;
pub mod metrics;
pub mod params;
pub mod text;

pub use engine::{Engine, Event, Request};
pub use params::ServerParams;
