//! The scheduler on the real dist/epp.wasm in host-sim: plugins from configuration,
//! prefix affinity across workers and proxies, in-flight accounting, objectives and
//! shedding, the subset hint, model rewrites, explain.

use std::collections::HashMap;

use epp_tests::hostsim::{addr, chat, first, load, route, servers, world_with, DEST, MODEL};
use host_sim::bench::{self, Policy, Workload};
use host_sim::{HttpRequest, World};
use model_sim::ServerParams;
use serde_json::{json, Value};

fn with_header(mut req: HttpRequest, name: &str, value: &str) -> HttpRequest {
    req.headers.push((name.into(), value.into()));
    req
}

fn status(o: &host_sim::RequestOutcome) -> u32 {
    o.local_response.as_ref().map_or(200, |r| r.status)
}

fn error_code(o: &host_sim::RequestOutcome) -> Value {
    let body = &o.local_response.as_ref().expect("a local answer").body;
    serde_json::from_slice::<Value>(body).expect("JSON error body")["error"]["code"].clone()
}

/// Prefix hit rate of `policy` on the shared-prefix workload, at 60 requests/s for 8 s.
fn hit_rate(policy: &str, proxies: usize, workers: usize) -> f64 {
    let workload = Workload::by_name("shared-prefix", None, true).expect("workload");
    let arrivals = workload.arrivals(60.0, 11);
    let Some(Policy::Module { name, scheduler, round_trip, .. }) = Policy::by_name(policy) else { panic!("{policy}") };
    let policy = Policy::Module { name, scheduler, proxies, workers, peers: true, share_scrapes: false, round_trip };
    let r = bench::run(&epp_tests::paths::epp_wasm(), &workload.servers, &arrivals, &|_, _| None, 0, &policy, &workload.objectives, 11, bench::Balancer::Turns)
        .expect("run");
    assert!(r.traps.is_empty(), "{:?}", r.traps);
    assert_eq!(r.errors, 0);
    r.prefix_hits as f64 / r.prefix_queries as f64
}

#[test]
fn prefix_affinity_holds_across_four_workers_and_two_proxies() {
    let global = hit_rate("default", 1, 1);
    let fleet = hit_rate("default", 2, 4);
    assert!(fleet >= global - 0.03, "4 workers × 2 proxies {fleet:.3} vs one global index {global:.3}");
    // GIE's default keeps its index per VM: the same fleet loses most of it.
    let gie_global = hit_rate("gie-default", 1, 1);
    let gie_fleet = hit_rate("gie-default", 2, 4);
    assert!(gie_fleet < gie_global - 0.15, "gie-default: {gie_fleet:.3} vs {gie_global:.3}");
    assert!(fleet > gie_global, "ours across 8 VMs {fleet:.3} beats GIE's single index {gie_global:.3}");
}

#[test]
fn requests_sent_between_scrapes_count_across_workers() {
    // One scrape every 10 s: the burst below never shows in the metrics.
    let plugin = json!({"scrape_interval_ms": 10_000, "stale_after_ms": 60_000});
    let mut w = world_with(servers(3, ServerParams::default()), plugin, 4, 1);
    load(&mut w, 1, 1, None);
    load(&mut w, 2, 1, None);
    w.advance_ms(300);
    let mut open = Vec::new();
    let mut sent: HashMap<String, usize> = HashMap::new();
    for i in 0..24 {
        let o = w.request(0, i % 4, &chat(MODEL));
        *sent.entry(first(&o)).or_default() += 1;
        open.push(o);
    }
    // Without the counts all 24 would see the same table and pick the idle server.
    assert!(sent.values().all(|&n| (6..=10).contains(&n)), "{sent:?}");
    // The counts the pickers share, and the gauges the scraper copies them into each tick.
    let counts = |w: &World| {
        let state = w.proxies[0].state.borrow();
        let bytes = state.shared_data.get("wasm-epp/v1/in-flight").map(|(b, _)| b.clone()).unwrap_or_default();
        epp::store::decode_u32s(&bytes)
    };
    let gauges = |w: &World| {
        (0..3).map(|i| w.proxies[0].metric(&epp::stats::in_flight_gauge(&addr(i)))).collect::<Vec<_>>()
    };
    // A worker writes its sends of one millisecond with its next write, or its timer's.
    w.advance_ms(25);
    assert_eq!(counts(&w).iter().sum::<u32>(), 24);
    w.advance_ms(10_000);
    assert_eq!(gauges(&w).iter().sum::<i64>(), 24, "the next scraper tick shows them");
    // Half end; the next request's write takes them off, with its own start.
    for o in &open[..12] {
        w.finish(0, o, 200);
    }
    let next = w.request(0, 0, &chat(MODEL));
    assert_eq!(counts(&w).iter().sum::<u32>(), 24 + 1 - 3, "worker 0's three ended streams went with its request");
    w.finish(0, &next, 200);
    for o in &open[12..] {
        w.finish(0, o, 200);
    }
    w.advance_ms(50);
    assert_eq!(counts(&w), vec![0, 0, 0], "every end is counted: the workers' timers took off the rest");
    w.advance_ms(10_000);
    assert_eq!(gauges(&w), vec![0, 0, 0]);
}

#[test]
fn sheddable_objectives_get_429_and_others_proceed() {
    let plugin = json!({"objectives": {"batch": -5, "chat": 3}});
    let mut w = world_with(servers(2, ServerParams { max_num_seqs: 1, ..Default::default() }), plugin, 2, 1);
    w.advance_ms(200);
    let batch = with_header(chat(MODEL), "x-gateway-inference-objective", "batch");
    assert_eq!(status(&route(&mut w, 0, 0, &batch)), 200, "room for batch work");
    load(&mut w, 0, 6, None);
    load(&mut w, 1, 6, None);
    w.advance_ms(200);
    let shed = route(&mut w, 0, 1, &batch);
    assert_eq!((status(&shed), error_code(&shed)), (429, json!("rate_limit_exceeded")));
    assert!(shed.upstream_headers.is_none(), "never forwarded");
    let urgent = with_header(chat(MODEL), "x-gateway-inference-objective", "chat");
    assert_eq!(status(&route(&mut w, 0, 0, &urgent)), 200);
    assert_eq!(status(&route(&mut w, 0, 0, &chat(MODEL))), 200, "no objective: priority 0");
}

#[test]
fn a_clients_subset_hint_is_removed_and_ignored_unless_trusted() {
    let mut w = world_with(servers(3, ServerParams::default()), json!({}), 2, 1);
    load(&mut w, 2, 20, None);
    w.advance_ms(200);
    let only = with_header(chat(MODEL), "x-gateway-destination-endpoint-subset", &addr(2));
    for _ in 0..10 {
        let o = route(&mut w, 0, 0, &only);
        assert_ne!(first(&o), addr(2), "a client does not send traffic to the loaded server");
        assert_eq!(o.upstream_header("x-gateway-destination-endpoint-subset"), None, "nor does the hint reach it");
    }
    let steer = with_header(chat(MODEL), "x-gateway-inference-objective", "chat");
    assert_eq!(route(&mut w, 0, 0, &steer).upstream_header("x-gateway-inference-objective"), None, "steering headers stop at the picker");
}

#[test]
fn the_subset_hint_restricts_and_an_empty_one_is_503() {
    // A filter before the picker sets the hint (and removes any client's copy).
    let mut w = world_with(servers(3, ServerParams::default()), json!({"trust_subset_header": true}), 2, 1);
    w.advance_ms(200);
    let only = with_header(chat(MODEL), "x-gateway-destination-endpoint-subset", &format!("{}, 10.9.9.9:1", addr(2)));
    for _ in 0..5 {
        assert_eq!(route(&mut w, 0, 0, &only).upstream_header(DEST), Some(addr(2).as_str()));
    }
    for hint in ["", "10.9.9.9:1"] {
        let o = route(&mut w, 0, 1, &with_header(chat(MODEL), "x-gateway-destination-endpoint-subset", hint));
        assert_eq!((status(&o), error_code(&o)), (503, json!("no_healthy_endpoint")), "{hint:?}");
    }
}

#[test]
fn model_rewrite_changes_the_body_and_its_length() {
    let params = ServerParams { adapters: vec!["sql-lora".into()], ..Default::default() };
    let rules = json!([{"model": "chat", "targets": [{"model": "sql-lora", "weight": 3}, {"model": MODEL, "weight": 1}]}]);
    let mut w = world_with(servers(2, params), json!({"model_rewrites": rules}), 2, 1);
    w.advance_ms(200);
    let mut models: HashMap<String, usize> = HashMap::new();
    for i in 0..200 {
        let o = route(&mut w, 0, i % 2, &chat("chat"));
        let body = o.upstream_body.as_ref().expect("forwarded");
        let length = o.upstream_header("content-length").expect("content-length");
        assert_eq!(length, body.len().to_string());
        let v: Value = serde_json::from_slice(body).expect("still JSON");
        assert_eq!(v["messages"][0]["content"], "hi");
        *models.entry(v["model"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    let lora = models.get("sql-lora").copied().unwrap_or(0);
    assert!((125..175).contains(&lora), "3:1 split: {models:?}");
    let untouched = route(&mut w, 0, 0, &chat(MODEL));
    assert_eq!(untouched.upstream_body.as_deref(), Some(chat(MODEL).body.as_slice()));
}

#[test]
fn profiles_come_from_configuration() {
    let scheduler = json!({
        "plugins": [{"type": "weighted-random-picker"}, {"type": "queue-scorer", "name": "q"},
                    {"type": "saturation-filter", "parameters": {"queueDepthThreshold": 3}}],
        "schedulingProfiles": [{"name": "spread", "plugins": [
            {"pluginRef": "saturation-filter"}, {"pluginRef": "q", "weight": 1}, {"pluginRef": "weighted-random-picker"}]}]
    });
    let mut w = world_with(servers(4, ServerParams::default()), json!({"scheduler": scheduler, "explain": true}), 2, 1);
    load(&mut w, 3, 12, None); // 8 running, 4 waiting: over the threshold of 3
    w.advance_ms(200);
    let mut chosen: HashMap<String, usize> = HashMap::new();
    let mut explained = String::new();
    for i in 0..60 {
        let o = w.request(0, i % 2, &chat(MODEL));
        *chosen.entry(first(&o)).or_default() += 1;
        if let Some(h) = w.finish(0, &o, 200) {
            explained = h.iter().find(|(k, _)| k == "x-wasm-epp-explain").map(|(_, v)| v.clone()).unwrap_or_default();
        }
    }
    assert_eq!(chosen.get(&addr(3)), None, "the saturated server is filtered out: {chosen:?}");
    assert_eq!(chosen.len(), 3, "weighted random spreads over the rest: {chosen:?}");
    assert!(explained.contains("q=") || explained.contains("queue-scorer="), "{explained}");
    assert!(explained.contains(&format!("saturation-filter removed {}", addr(3))), "{explained}");

    // A typo stops the VM with the field named, as Envoy would refuse the filter.
    let bad = json!({"endpoints": [addr(0)], "scheduler": {"plugins": [{"type": "queue-scorrer"}], "schedulingProfiles": [{"name": "p", "plugins": [{"pluginRef": "queue-scorrer"}]}]}});
    let proxy = host_sim::ProxyConfig { plugin_config: bad.to_string(), workers: 1, ..Default::default() };
    let world = World::new(&epp_tests::paths::epp_wasm(), host_sim::Fleet::new(servers(1, ServerParams::default())), 1, proxy).expect("world");
    let errors = world.proxies[0].startup_errors.join("\n");
    assert!(errors.contains("scheduler") && errors.contains("queue-scorrer"), "{errors}");
}

#[test]
fn the_presets_load_and_gie_default_is_gies_profile() {
    for preset in ["default", "gie-default"] {
        let mut w = world_with(servers(2, ServerParams::default()), json!({"scheduler": preset, "explain": true}), 1, 1);
        w.advance_ms(200);
        let o = w.request(0, 0, &chat(MODEL));
        let headers = w.finish(0, &o, 200).expect("answered");
        let explain = headers.iter().find(|(k, _)| k == "x-wasm-epp-explain").map(|(_, v)| v.as_str()).unwrap_or_default();
        for scorer in ["queue-scorer=", "kv-cache-utilization-scorer=", "prefix-cache-scorer="] {
            assert!(explain.contains(scorer), "{preset}: {explain}");
        }
        assert_eq!(explain.contains("lora-affinity-scorer="), preset == "default", "{preset}: {explain}");
        if preset == "gie-default" {
            assert!(explain.contains("queue-scorer=1.000x2") && explain.contains("prefix-cache-scorer=0.000x3"), "{explain}");
        }
    }
}
