//! Every integration test, one module per area, in one binary: wasmtime and the harness
//! link once. Run one area with `cargo test --release -p epp-tests --test integration --
//! corpus::` (or any part of a test's path).

mod corpus;
mod deploy;
mod envoy;
mod envoy_scheduling;
mod fleet_bench;
mod floor_steps;
mod host_conformance;
mod host_sim;
mod host_sim_peers;
mod host_sim_profile;
mod host_sim_scheduling;
mod real_pages;
