//! `bench-overhead --steps` reads the module's cost off a floor module that does the
//! picker's chores without deciding. That holds only while the floor makes the host calls
//! the module makes: checked here, call by call, in host-sim.

use std::collections::BTreeMap;
use std::path::Path;

use epp_tests::hostsim::{route, servers, world_of, MODEL};
use epp_tests::paths;
use host_sim::{HttpRequest, World};
use model_sim::ServerParams;
use serde_json::{json, Value};

/// The host functions one request calls, by name, from its headers to its stream's end:
/// the fourth of four identical requests, so that once-per-prefix work (the assignment,
/// then its promotion on first reuse, then the read after it) is behind it, as in steady
/// traffic. Each in a new millisecond (`new_ms`: the worker's shared-data reads and write
/// happen then), or all in one (a busy worker's later requests share them).
fn calls_per_request(wasm: &Path, plugin: Value, new_ms: bool) -> BTreeMap<&'static str, u64> {
    let mut world = world_of(wasm, servers(4, ServerParams::default()), plugin, 1, 1);
    world.advance_ms(200);
    let prompt = "Summarise the quarterly report in three lines. ".repeat(30);
    let request = HttpRequest::post_json(
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}]}),
    );
    let coverage = |w: &World| w.proxies[0].state.borrow().coverage.clone();
    let mut measured = BTreeMap::new();
    for _ in 0..4 {
        if new_ms {
            world.advance_ms(1);
        }
        let before = coverage(&world);
        route(&mut world, 0, 0, &request);
        measured = coverage(&world);
        for (name, count) in measured.iter_mut() {
            *count -= before.get(name).copied().unwrap_or(0);
        }
        measured.retain(|_, n| *n > 0);
    }
    measured
}

#[test]
fn the_floor_with_every_chore_calls_the_host_as_the_module_does() {
    for new_ms in [true, false] {
        let module = calls_per_request(&paths::epp_wasm(), json!({}), new_ms);
        let floor = calls_per_request(&paths::floor_wasm(), json!({"steps": 5}), new_ms);
        assert_eq!(floor, module, "the floor's chores (filter/examples/floor.rs) no longer match the module's host calls (new_ms {new_ms})");
        assert_eq!(module.get("proxy_set_shared_data").is_some(), new_ms, "{module:?}");
    }
}

#[test]
fn the_bare_floor_only_reads_the_body() {
    let floor = calls_per_request(&paths::floor_wasm(), json!({}), true);
    assert_eq!(floor, BTreeMap::from([("proxy_get_buffer_bytes", 1)]));
}
