//! Set-ups the host-sim tests share: a world of the real module over simulated servers.

use host_sim::{Fleet, HttpRequest, ProxyConfig, RequestOutcome, SimServer, World};
use model_sim::{Request, ServerParams};
use serde_json::{json, Value};

pub use crate::MODEL;
pub const DEST: &str = "x-gateway-destination-endpoint";

pub fn addr(i: usize) -> String {
    format!("10.0.0.{}:8000", i + 1)
}

pub fn world_with(servers: Vec<SimServer>, plugin: Value, workers: usize, proxies: usize) -> World {
    world_of(&crate::paths::epp_wasm(), servers, plugin, workers, proxies)
}

/// `world_with`, running another module (bench-overhead's floor, say).
pub fn world_of(wasm: &std::path::Path, servers: Vec<SimServer>, plugin: Value, workers: usize, proxies: usize) -> World {
    world_from(wasm, servers, plugin, ProxyConfig { workers, ..Default::default() }, proxies)
}

/// Proxies without a singleton, as Istio's `WasmPlugin` or Envoy Gateway install the
/// module: the workers elect their scraper.
pub fn picker_only_world(servers: Vec<SimServer>, plugin: Value, workers: usize, proxies: usize) -> World {
    let proxy = ProxyConfig { workers, singleton: false, ..Default::default() };
    world_from(&crate::paths::epp_wasm(), servers, plugin, proxy, proxies)
}

/// A world of `proxies` built from `proxy` (its plugin configuration filled in: the
/// fleet's addresses as `endpoints`, unless `plugin` names a `pool_cluster`, then `plugin`).
pub fn world_from(wasm: &std::path::Path, servers: Vec<SimServer>, plugin: Value, mut proxy: ProxyConfig, proxies: usize) -> World {
    let fleet = Fleet::new(servers);
    let mut config = if plugin.get("pool_cluster").is_some() { json!({}) } else { json!({"endpoints": fleet.addresses()}) };
    if let (Some(c), Some(p)) = (config.as_object_mut(), plugin.as_object()) {
        c.extend(p.clone());
    }
    proxy.plugin_config = config.to_string();
    let world = World::new(wasm, fleet, proxies, proxy).expect("world");
    for p in &world.proxies {
        assert!(p.startup_errors.is_empty(), "{:?}", p.startup_errors);
    }
    world
}

pub fn servers(n: usize, params: ServerParams) -> Vec<SimServer> {
    (0..n).map(|i| SimServer::new(&addr(i), params.clone())).collect()
}

pub fn chat(model: &str) -> HttpRequest {
    HttpRequest::post_json("/v1/chat/completions", &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
}

/// Queues `n` long requests on a server, from outside the gateway.
pub fn load(world: &mut World, server: usize, n: u64, adapter: Option<&str>) {
    let now = world.now_us();
    let s = world.fleet.server(&addr(server)).expect("server");
    for id in 0..n {
        s.submit(Request { id: 10_000 + id, prompt_tokens: 256, max_tokens: 5000, adapter: adapter.map(String::from), ..Default::default() }, now);
    }
}

pub fn first(o: &RequestOutcome) -> String {
    let dest = o.upstream_header(DEST).unwrap_or_else(|| panic!("not routed: {o:?}"));
    dest.split(',').next().unwrap_or_default().to_string()
}

pub fn route(world: &mut World, proxy: usize, worker: usize, req: &HttpRequest) -> RequestOutcome {
    let o = world.request(proxy, worker, req);
    assert!(o.trap.is_none(), "{:?}", o.trap);
    world.finish(proxy, &o, 200);
    o
}

