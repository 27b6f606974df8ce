//! Scenarios on the real dist/epp.wasm in host-sim: Envoy's topology (a singleton scraper,
//! worker pickers sharing one vm_id's shared data), simulated vLLM servers, virtual time.

use epp_tests::hostsim::{addr, chat, first, load, picker_only_world, route, servers, world_with, DEST, MODEL};
use host_sim::{Fault, Fleet, HttpRequest, ProxyConfig, RequestOutcome, SimServer, World};
use model_sim::ServerParams;
use serde_json::{json, Value};

#[test]
fn all_workers_pick_from_one_table() {
    let mut w = world_with(servers(4, ServerParams { max_num_seqs: 4, ..Default::default() }), json!({}), 4, 1);
    load(&mut w, 0, 30, None);
    load(&mut w, 1, 20, None);
    load(&mut w, 2, 10, None);
    w.advance_ms(200);
    for worker in 0..4 {
        let o = route(&mut w, 0, worker, &chat(MODEL));
        assert_eq!(o.upstream_header(DEST), Some(format!("{},{},{}", addr(3), addr(2), addr(1)).as_str()), "worker {worker}");
    }
    assert_eq!(w.proxies[0].metric("wasm_epp.fail_open"), 0);
}

#[test]
fn before_the_first_scrape_the_picker_fails_open_and_counts_it() {
    let mut w = world_with(servers(3, ServerParams::default()), json!({}), 2, 1);
    let mut chosen = std::collections::BTreeSet::new();
    for i in 0..6 {
        chosen.insert(first(&route(&mut w, 0, i % 2, &chat(MODEL))));
    }
    assert!(chosen.len() >= 2, "spread over the configured endpoints: {chosen:?}");
    assert_eq!(w.proxies[0].metric("wasm_epp.fail_open"), 6);
    w.advance_ms(200);
    route(&mut w, 0, 0, &chat(MODEL));
    assert_eq!(w.proxies[0].metric("wasm_epp.fail_open"), 6, "scheduled once the table is there");
}

#[test]
fn unhealthy_servers_are_avoided_and_come_back() {
    let mut w = world_with(servers(3, ServerParams::default()), json!({"scrape_timeout_ms": 300}), 2, 1);
    w.advance_ms(100);
    for (server, fault) in [(0, Fault::Timeout), (1, Fault::Refused)] {
        w.fleet.server(&addr(server)).expect("server").fault = fault;
    }
    w.advance_ms(400);
    for i in 0..20 {
        let o = route(&mut w, 0, i % 2, &chat(MODEL));
        assert_eq!(o.upstream_header(DEST), Some(addr(2).as_str()), "only the healthy one, no fallbacks");
    }
    w.fleet.server(&addr(0)).expect("server").fault = Fault::None;
    w.advance_ms(500);
    let seen: std::collections::BTreeSet<String> = (0..40).map(|i| first(&route(&mut w, 0, i % 2, &chat(MODEL)))).collect();
    assert!(seen.contains(&addr(0)), "healed server used again: {seen:?}");
    assert!(!seen.contains(&addr(1)));
}

#[test]
fn a_stopped_singleton_is_replaced_by_a_worker_and_until_then_pickers_fail_open() {
    // A lease longer than the table's freshness, to see both: the stale table, then a
    // worker taking the lease over.
    let mut w = world_with(servers(2, ServerParams::default()), json!({"stale_after_ms": 1000, "scraper_lease_ms": 3000}), 2, 1);
    w.advance_ms(200);
    assert_eq!(w.proxies[0].scraping_vms(), [0], "the singleton claims the lease");
    route(&mut w, 0, 0, &chat(MODEL));
    assert_eq!(w.proxies[0].metric("wasm_epp.fail_open"), 0);
    // The singleton dies (its VM failed): nothing publishes any more.
    w.proxies[0].vms[0].failed = Some("stopped by the test".into());
    w.advance_ms(900);
    route(&mut w, 0, 0, &chat(MODEL));
    assert_eq!(w.proxies[0].metric("wasm_epp.fail_open"), 0, "still fresh");
    w.advance_ms(200);
    let o = route(&mut w, 0, 1, &chat(MODEL));
    assert!(o.upstream_header(DEST).is_some());
    assert_eq!(w.proxies[0].metric("wasm_epp.fail_open"), 1);
    // The lease runs out 3 s after the singleton's last renewal, and the idle workers,
    // ticking every quarter of a lease term, bid within one such tick: a worker scrapes.
    w.advance_ms(1000);
    assert!(w.proxies[0].scraping_vms().is_empty(), "the lease still runs");
    w.advance_ms(1000 + 750);
    let scraping = w.proxies[0].scraping_vms();
    assert_eq!(scraping.len(), 1, "{scraping:?}");
    assert_ne!(scraping[0], 0);
    w.advance_ms(100);
    route(&mut w, 0, 0, &chat(MODEL));
    assert_eq!(w.proxies[0].metric("wasm_epp.fail_open"), 1, "scheduled again");
}

#[test]
fn idle_workers_tick_slowly_and_a_stream_wakes_its_worker_at_once() {
    let mut w = picker_only_world(servers(2, ServerParams::default()), json!({}), 3, 1);
    w.advance_ms(1000);
    let scraping = w.proxies[0].scraping_vms();
    assert_eq!(scraping.len(), 1, "{scraping:?}");
    let period = |w: &World, worker: usize| w.proxies[0].tick_period_ms(w.proxies[0].worker_vm(worker));
    for worker in 0..3 {
        let scrapes = scraping.contains(&w.proxies[0].worker_vm(worker));
        assert_eq!(period(&w, worker), if scrapes { 20 } else { 250 }, "worker {worker} (scrapes: {scrapes})");
    }
    let idle = (0..3).find(|&k| !scraping.contains(&w.proxies[0].worker_vm(k))).expect("an idle worker");
    let in_flight = |w: &World| {
        let state = w.proxies[0].state.borrow();
        let bytes = state.shared_data.get(epp::in_flight::KEY).map(|(b, _)| b.clone()).unwrap_or_default();
        bytes.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap_or_default())).sum::<u32>()
    };
    let before = in_flight(&w);
    let o = w.request(0, idle, &chat(MODEL));
    assert!(o.upstream_header(DEST).is_some(), "{o:?}");
    assert_eq!(period(&w, idle), 20, "a stream makes its worker's timer fast at once");
    assert_eq!(in_flight(&w), before + 1, "counted as it is sent");
    w.advance_ms(5);
    w.finish(0, &o, 200);
    w.advance_ms(25);
    assert_eq!(in_flight(&w), before, "its end reached the shared counts within one fast tick");
    w.advance_ms(200);
    assert_eq!(period(&w, idle), 20, "still fast: 250 ms of quiet ticks come first");
    w.advance_ms(100);
    assert_eq!(period(&w, idle), 250, "then slow again");
}

#[test]
fn without_a_singleton_one_worker_scrapes_and_a_killed_one_is_replaced_within_the_lease() {
    let n = 4;
    let mut w = picker_only_world(servers(n, ServerParams::default()), json!({}), 4, 1);
    w.advance_ms(1000);
    let leaders = w.proxies[0].scraping_vms();
    assert_eq!(leaders.len(), 1, "one of four workers scrapes: {leaders:?}");
    // Each server is scraped every 50 ms by that one worker, not by four.
    let scrapes = |w: &World| w.fleet.scrapes.values().sum::<u64>();
    let before = scrapes(&w);
    w.advance_ms(1000);
    let per_server = (scrapes(&w) - before) as f64 / n as f64;
    assert!((18.0..=21.0).contains(&per_server), "{per_server} scrapes per server per second");

    // Kill the leader; route through the others every 10 ms, through the gap.
    let leader = leaders[0];
    w.proxies[0].kill_worker(leader);
    let killed_at = w.now_us();
    let mut taken_over = None;
    let mut decisions = 0;
    for step in 0..150 {
        let worker = (leader + 1 + step % 3) % 4;
        let o = route(&mut w, 0, worker, &chat(MODEL));
        assert!(o.upstream_header(DEST).is_some() && o.local_response.is_none(), "{o:?}");
        decisions += 1;
        w.advance_ms(10);
        if taken_over.is_none() && !w.proxies[0].scraping_vms().is_empty() {
            taken_over = Some(w.now_us() - killed_at);
        }
    }
    let taken_over = taken_over.expect("another worker takes the lease");
    assert!(taken_over <= 1_050_000, "taken over {taken_over} µs after the kill (lease 1000 ms)");
    assert_ne!(w.proxies[0].scraping_vms(), [leader]);
    assert_eq!(w.proxies[0].metric("wasm_epp.fail_open"), 0, "{decisions} decisions, none failed open: the table stayed fresh");
    assert_eq!(w.proxies[0].metric("wasm_epp.routed"), decisions);
    // The new scraper carries the table on: its generations keep rising.
    let generation = |w: &World| {
        let state = w.proxies[0].state.borrow();
        let bytes = &state.shared_data.get(epp::table::GENERATION_KEY).expect("a generation").0;
        u64::from_le_bytes(bytes.as_slice().try_into().expect("8 bytes"))
    };
    let g = generation(&w);
    w.advance_ms(200);
    assert!(generation(&w) > g);

    // Envoy reloads the dead VM: a fresh candidate, who finds the lease held.
    w.proxies[0].reload_worker(leader).expect("reload");
    w.advance_ms(2000);
    assert_eq!(w.proxies[0].scraping_vms().len(), 1);
    assert!(w.traps().iter().all(|t| t.contains("killed by the test")), "{:?}", w.traps());
}

#[test]
fn a_scraper_root_id_on_the_http_filter_is_an_error_not_a_trap() {
    let fleet = Fleet::new(servers(2, ServerParams::default()));
    let config = json!({"endpoints": fleet.addresses()}).to_string();
    let proxy = ProxyConfig { plugin_config: config, worker_root_id: "scraper".into(), singleton: false, workers: 2, ..Default::default() };
    let mut w = World::new(&epp_tests::paths::epp_wasm(), fleet, 1, proxy).expect("world");
    w.advance_ms(200);
    let mut req = chat(MODEL);
    req.headers.push((DEST.into(), addr(1)));
    for _ in 0..3 {
        let o = route(&mut w, 0, 0, &req);
        assert!(o.trap.is_none() && o.local_response.is_none(), "{o:?}");
        assert!(o.upstream_headers.is_some(), "the request passes");
        assert_eq!(o.upstream_header(DEST), None, "a client's destination is never honoured");
    }
    let logs: Vec<String> = w.proxies[0].vms[0].state().logs.iter().map(|(_, m)| m.clone()).collect();
    let told: Vec<&String> = logs.iter().filter(|m| m.contains("root_id \"picker\"")).collect();
    assert_eq!(told.len(), 1, "said once, with what to do: {logs:?}");
    assert!(w.traps().is_empty(), "{:?}", w.traps());
}

#[test]
fn lora_requests_go_where_the_adapter_runs() {
    let params = |max_loras| ServerParams { adapters: vec!["sql-lora".into(), "tweet-lora".into()], max_loras, ..Default::default() };
    let mut fleet = vec![SimServer::new(&addr(0), params(2)), SimServer::new(&addr(1), params(1))];
    fleet.push(SimServer::new(&addr(2), ServerParams::default()));
    let mut w = world_with(fleet, json!({}), 2, 1);
    load(&mut w, 0, 1, Some("sql-lora"));
    load(&mut w, 1, 1, Some("tweet-lora"));
    w.advance_ms(6000); // past the first /v1/models reads
    for i in 0..10 {
        let o = route(&mut w, 0, i % 2, &chat("sql-lora"));
        assert_eq!(o.upstream_header(DEST), Some(addr(0).as_str()), "only where sql-lora can run now");
    }
    let o = route(&mut w, 0, 0, &chat("no-such-lora"));
    assert_eq!(o.status(), Some(404));
}

fn error_code(o: &RequestOutcome) -> (u32, String) {
    let r = o.local_response.as_ref().unwrap_or_else(|| panic!("no local response: {o:?}"));
    let v: Value = serde_json::from_slice(&r.body).expect("JSON error body");
    assert!(r.headers.iter().any(|(k, v)| k == "content-type" && v == "application/json"));
    (r.status, v["error"]["code"].as_str().unwrap_or_default().to_string())
}

#[test]
fn errors_are_answered_by_the_module_and_never_forwarded() {
    let mut w = world_with(servers(2, ServerParams::default()), json!({"max_body_bytes": 2048}), 2, 1);
    w.advance_ms(200);
    let post = |body: &[u8]| HttpRequest {
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        headers: vec![],
        body: body.to_vec(),
        chunk: 512,
    };
    for (body, status, code) in [
        (&b"{oops"[..], 400, "invalid_json"),
        (&br#"{"messages":[]}"#[..], 400, "missing_model"),
        (&br#"{"model":["x"]}"#[..], 400, "invalid_model"),
        (&br#"{"model":"gpt-9"}"#[..], 404, "model_not_found"),
    ] {
        let o = route(&mut w, 0, 0, &post(body));
        assert_eq!(error_code(&o), (status, code.to_string()));
        assert!(o.upstream_headers.is_none(), "{code} was forwarded");
    }
    // A body the picker cannot read is 415, and a spelling of an OpenAI path that a model
    // server would still serve is checked as that path.
    let mut gz = post(b"\x1f\x8b\x08\x00compressed");
    gz.headers.push(("content-encoding".into(), "gzip".into()));
    let o = route(&mut w, 0, 0, &gz);
    assert_eq!(error_code(&o), (415, "unsupported_content_encoding".to_string()));
    assert!(o.upstream_headers.is_none());
    for path in ["/v1//chat/completions", "/v1/chat%2Fcompletions", "/v1/chat/completions/"] {
        let mut r = post(br#"{"messages":[]}"#);
        r.path = path.into();
        let o = route(&mut w, 0, 0, &r);
        assert_eq!(error_code(&o), (400, "missing_model".to_string()), "{path}");
    }
    let big = json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let o = route(&mut w, 0, 1, &post(big.to_string().as_bytes()));
    assert_eq!(error_code(&o), (413, "request_too_large".to_string()));
    assert!(o.upstream_headers.is_none());

    // No server answers (a metrics outage alone fails open: a_metrics_outage_is_not_a_serving_outage).
    for i in 0..2 {
        w.fleet.server(&addr(i)).expect("server").fault = Fault::Refused;
    }
    w.advance_ms(200);
    let o = route(&mut w, 0, 0, &chat(MODEL));
    assert_eq!(error_code(&o), (503, "no_healthy_endpoint".to_string()));
    assert!(o.upstream_headers.is_none());
    assert_eq!(w.proxies[0].metric("wasm_epp.rejected"), 10);
}

#[test]
fn a_client_destination_header_is_replaced() {
    let mut w = world_with(servers(2, ServerParams::default()), json!({}), 1, 1);
    load(&mut w, 0, 40, None);
    w.advance_ms(200);
    let mut req = chat(MODEL);
    req.headers.push((DEST.into(), addr(0)));
    let o = route(&mut w, 0, 0, &req);
    assert_eq!(first(&o), addr(1));
    let copies = o.upstream_headers.as_ref().map_or(0, |h| h.iter().filter(|(k, _)| k == DEST).count());
    assert_eq!(copies, 1);
}

#[test]
fn without_allow_on_headers_stop_iteration_the_body_comes_too_late() {
    // What Envoy does when the plugin config lacks the flag: headers go on at once, so the
    // destination header never makes it upstream. The shipped configs set the flag.
    let fleet = Fleet::new(servers(2, ServerParams::default()));
    let config = json!({"endpoints": fleet.addresses()}).to_string();
    let proxy = ProxyConfig { plugin_config: config, allow_on_headers_stop_iteration: false, ..Default::default() };
    let mut w = World::new(&epp_tests::paths::epp_wasm(), fleet, 1, proxy).expect("world");
    w.advance_ms(200);
    let o = route(&mut w, 0, 0, &chat(MODEL));
    assert!(o.upstream_headers.is_some() && o.upstream_header(DEST).is_none());
}

#[test]
fn a_bad_configuration_is_refused_with_the_field_named() {
    for (plugin, field) in [
        (json!({"stale_after_ms": 0}), "stale_after_ms"),
        (json!({"enginee": "vllm"}), "enginee"),
        (json!({"endpoints": ["not-an-address"]}), "endpoints[0]"),
    ] {
        let mut config = json!({"endpoints": ["10.0.0.1:8000"]});
        if let (Some(c), Some(p)) = (config.as_object_mut(), plugin.as_object()) {
            c.extend(p.clone());
        }
        let proxy = ProxyConfig { plugin_config: config.to_string(), ..Default::default() };
        let w = World::new(&epp_tests::paths::epp_wasm(), Fleet::default(), 1, proxy).expect("world");
        let errors = &w.proxies[0].startup_errors;
        assert_eq!(errors.len(), 3, "the scraper and both workers refuse: {errors:?}");
        assert!(errors.iter().all(|e| e.contains("invalid plugin configuration") && e.contains(field)), "{errors:?}");
    }
}

#[test]
fn the_scraper_in_wasm_reads_every_real_captured_page() {
    let dir = epp_tests::paths::repo_root().join("tests/fixtures/metrics");
    for (file, engine) in [
        ("vllm-v1-qwen3-4b-instruct-fp8.txt", "vllm"),
        ("vllm-v0-mymodelname-vllm-composer-test.txt", "vllm"),
        ("llm-d-inference-sim-ssup2-blog-istio-gie.txt", "vllm"),
        ("sglang-llama3.1-8b-loaded-docs-2025-03.txt", "sglang"),
        ("sglang-legacy-gemma2-9b-docs-2024-11.txt", "sglang"),
        ("triton-trtllm-readme-2025-waiting-fraction.txt", "triton-trtllm"),
        ("triton-trtllm-readme-2023-inflight-batcher.txt", "triton-trtllm"),
    ] {
        let page = std::fs::read_to_string(dir.join(file)).expect("fixture");
        let mut s = servers(2, ServerParams::default());
        s[0].page_override = Some(page);
        s[1].fault = Fault::ServerError;
        let mut w = world_with(s, json!({"engine": engine, "models_path": ""}), 1, 1);
        w.advance_ms(200);
        // The server with the real page is healthy (the other one fails its scrapes).
        let o = route(&mut w, 0, 0, &HttpRequest::get("/v1/models"));
        assert_eq!(o.upstream_header(DEST), Some(addr(0).as_str()), "{file}");
        assert!(w.traps().is_empty(), "{file}: {:?}", w.traps());
    }
}

#[test]
fn picker_memory_is_flat_over_100k_requests() {
    let mut w = world_with(servers(8, ServerParams::default()), json!({}), 1, 1);
    w.advance_ms(200);
    let reqs = [chat(MODEL), chat("nope"), HttpRequest::get("/v1/models")];
    let run = |w: &mut World, n: usize| {
        for i in 0..n {
            route(w, 0, 0, &reqs[i % reqs.len()]);
            if i % 500 == 0 {
                w.advance_ms(50);
            }
        }
    };
    run(&mut w, 2_000);
    let warm = w.proxies[0].vms[1].memory_bytes();
    run(&mut w, 100_000);
    let after = w.proxies[0].vms[1].memory_bytes();
    assert_eq!(after, warm, "linear memory grew from {warm} to {after} bytes");
    assert!(w.traps().is_empty());
}

#[test]
fn replays_exactly_from_the_seed() {
    let decisions = || {
        let mut w = world_with(servers(4, ServerParams::default()), json!({}), 2, 2);
        w.advance_ms(200);
        (0..50).map(|i| route(&mut w, i % 2, i % 2, &chat(MODEL)).upstream_header(DEST).map(String::from)).collect::<Vec<_>>()
    };
    assert_eq!(decisions(), decisions());
}

#[test]
fn a_panicking_module_is_reported_with_the_callback_and_the_message() {
    let wasm = epp_tests::paths::repo_root().join("dist/test/panics.wasm");
    assert!(wasm.exists(), "{} is built by ./build.sh test", wasm.display());
    let fleet = Fleet::new(servers(2, ServerParams::default()));
    let config = json!({"endpoints": fleet.addresses()}).to_string();
    let mut w = World::new(&wasm, fleet, 1, ProxyConfig { plugin_config: config, ..Default::default() }).expect("world");
    w.advance_ms(200);
    let o = w.request(0, 0, &chat(MODEL));
    let trap = o.trap.expect("the fixture's panic traps");
    assert!(trap.contains("proxy_on_request_body") && trap.contains("injected panic"), "{trap}");
    let again = w.request(0, 0, &chat(MODEL));
    assert!(again.trap.is_some_and(|t| t.contains("VM failed earlier")), "a failed VM stays failed");
}

#[test]
fn a_discovered_pool_follows_envoys_membership_and_verdicts() {
    let plugin = json!({"pool_cluster": host_sim::world::POOL_CLUSTER});
    let mut w = picker_only_world(servers(3, ServerParams::default()), plugin, 2, 1);
    let spread = |w: &mut World| -> std::collections::BTreeSet<String> {
        (0..60).map(|i| first(&route(w, 0, i % 2, &chat(MODEL)))).collect()
    };
    w.advance_ms(500);
    assert_eq!(spread(&mut w), (0..3).map(addr).collect(), "all three, from Envoy's membership");
    // Envoy ejects one (outlier detection) and another starts draining: neither gets more.
    w.fleet.pool[0].1 = Some("ejected".into());
    w.fleet.pool[1].1 = Some("DRAINING".into());
    w.advance_ms(300);
    assert_eq!(spread(&mut w), [addr(2)].into());
    // A fourth joins; the ejected one leaves the pool altogether.
    w.fleet.add(SimServer::new(&addr(3), ServerParams::default()));
    w.fleet.pool.remove(0);
    w.fleet.pool[0].1 = None;
    w.advance_ms(400);
    assert_eq!(spread(&mut w), [addr(1), addr(2), addr(3)].into());
    // Every server serving the model is unhealthy in Envoy's eyes: 503, with Envoy's reason.
    for host in &mut w.fleet.pool {
        host.1 = Some("UNHEALTHY".into());
    }
    w.advance_ms(300);
    let o = route(&mut w, 0, 0, &chat(MODEL));
    let r = o.local_response.expect("answered by the module");
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("EDS status UNHEALTHY"), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(w.proxies[0].metric("wasm_epp.fail_open"), 0);
}

#[test]
fn a_metrics_outage_is_not_a_serving_outage() {
    let mut w = world_with(servers(3, ServerParams::default()), json!({}), 2, 1);
    w.advance_ms(300);
    // Every server's /metrics now answers 500, but the servers serve.
    for s in &mut w.fleet.servers {
        s.fault = Fault::ServerError;
    }
    w.advance_ms(300);
    let mut spread = std::collections::BTreeSet::new();
    for i in 0..30 {
        let o = route(&mut w, 0, i % 2, &chat(MODEL));
        assert!(o.local_response.is_none(), "{o:?}");
        spread.insert(first(&o));
    }
    assert_eq!(spread.len(), 3, "spread over the servers that answer: {spread:?}");
    assert_eq!(w.proxies[0].metric("wasm_epp.fail_open"), 30);
    let said: Vec<String> = w.proxies[0].vms.iter().flat_map(|vm| vm.state().logs.iter().map(|(_, m)| m.clone())).collect();
    let outage: Vec<&String> = said.iter().filter(|m| m.contains("all endpoints' metrics fail")).collect();
    assert_eq!(outage.len(), 2, "once per worker: {outage:?}");
    assert!(outage[0].contains("HTTP 500"), "{}", outage[0]);
    // A model nobody serves is still 404: the model lists are still known.
    assert_eq!(route(&mut w, 0, 0, &chat("no-such-model")).status(), Some(404));
    // Servers that refuse connections are not failed open to: 503.
    for s in &mut w.fleet.servers {
        s.fault = Fault::Refused;
    }
    w.advance_ms(300);
    assert_eq!(route(&mut w, 0, 0, &chat(MODEL)).status(), Some(503));
}

#[test]
fn a_server_reporting_four_billion_kv_blocks_does_not_size_the_proxys_memory() {
    let page = std::fs::read_to_string(epp_tests::paths::repo_root().join("tests/fixtures/metrics/vllm-v1-qwen3-4b-instruct-fp8.txt"))
        .expect("a captured vLLM page")
        .replace("num_gpu_blocks=\"850\"", "num_gpu_blocks=\"4000000000\"");
    let mut server = SimServer::new(&addr(0), ServerParams::default());
    server.page_override = Some(page);
    let mut w = world_with(vec![server], json!({"models_path": ""}), 1, 1);
    w.advance_ms(200);
    let model = "Qwen/Qwen3-4B-Instruct-2507-FP8";
    let ask = |w: &mut World, i: usize| {
        let prompt = format!("{i:08} {}", "distinct prompt text ".repeat(800));
        let req = HttpRequest::post_json("/v1/chat/completions", &json!({"model": model, "messages": [{"role": "user", "content": prompt}]}));
        assert!(route(w, 0, 0, &req).upstream_header(DEST).is_some());
    };
    for i in 0..500 {
        ask(&mut w, i);
    }
    let warm = w.proxies[0].vms[1].memory_bytes();
    // 12,000 one-off prompts of 256 blocks each: 3 million blocks, four times what the index
    // keeps (16 MiB at 24 bytes a block: 700,000). Without the cap it grows past 60 MiB.
    for i in 500..12_500 {
        ask(&mut w, i);
    }
    let grown = w.proxies[0].vms[1].memory_bytes().saturating_sub(warm);
    assert!(grown < 24 << 20, "the picker's memory grew {} MiB", grown >> 20);
    eprintln!("picker memory grew {} MiB over 12,000 one-off prompts", grown >> 20);
}

/// How long after `fault` hits server 0 of three the picker stops sending to it, in ms of
/// virtual time (a decision every 10 ms), and whether it comes back once healed.
fn time_to_route_around(fault: Fault) -> (u64, u64) {
    let mut w = world_with(servers(3, ServerParams::default()), json!({}), 2, 1);
    w.advance_ms(500);
    let since = |w: &World, t: u64| (w.now_us() - t) / 1000;
    w.fleet.server(&addr(0)).expect("server").fault = fault;
    let hit = w.now_us();
    let mut last_to_it = 0;
    for i in 0..300 {
        let o = route(&mut w, 0, i % 2, &chat(MODEL));
        if o.upstream_header(DEST).is_some_and(|d| d.starts_with(&addr(0))) {
            last_to_it = since(&w, hit);
        }
        assert!(o.local_response.is_none(), "{fault:?}: {o:?}");
        w.advance_ms(10);
    }
    w.fleet.server(&addr(0)).expect("server").fault = Fault::None;
    let healed = w.now_us();
    let mut back = None;
    for i in 0..300 {
        let o = route(&mut w, 0, i % 2, &chat(MODEL));
        if back.is_none() && o.upstream_header(DEST).is_some_and(|d| d.starts_with(&addr(0))) {
            back = Some(since(&w, healed));
        }
        w.advance_ms(10);
    }
    assert!(w.traps().is_empty(), "{:?}", w.traps());
    (last_to_it, back.expect("the healed server is used again"))
}

#[test]
fn single_server_faults_are_routed_around_within_a_scrape_timeout() {
    for fault in [Fault::Timeout, Fault::Refused, Fault::ServerError, Fault::Garbage, Fault::Oversized] {
        let (around, back) = time_to_route_around(fault);
        eprintln!("{fault:?}: last decision for the faulty server {around} ms after the fault; used again {back} ms after it healed");
        // A scrape that hangs is given scrape_timeout_ms (1 s); the others fail at once.
        let bound = if fault == Fault::Timeout { 1_100 } else { 120 };
        assert!(around <= bound, "{fault:?}: {around} ms");
        assert!(back <= 1_200, "{fault:?}: back after {back} ms");
    }
}

#[test]
fn the_whole_pool_going_down_is_503_and_coming_back_is_scheduled_at_once() {
    let mut w = world_with(servers(3, ServerParams::default()), json!({}), 2, 1);
    w.advance_ms(500);
    for s in &mut w.fleet.servers {
        s.fault = Fault::Refused;
    }
    w.advance_ms(200);
    for i in 0..10 {
        assert_eq!(route(&mut w, 0, i % 2, &chat(MODEL)).status(), Some(503));
    }
    for s in &mut w.fleet.servers {
        s.fault = Fault::None;
    }
    let back = w.now_us();
    let mut first_ok = None;
    for i in 0..100 {
        let o = route(&mut w, 0, i % 2, &chat(MODEL));
        if o.local_response.is_none() && first_ok.is_none() {
            first_ok = Some((w.now_us() - back) / 1000);
        }
        w.advance_ms(5);
    }
    let first_ok = first_ok.expect("scheduled again");
    eprintln!("the pool came back: scheduled again {first_ok} ms later");
    assert!(first_ok <= 120, "{first_ok} ms");
}

#[test]
fn a_flapping_server_gets_little_traffic_while_it_is_down() {
    let mut w = world_with(servers(3, ServerParams::default()), json!({}), 2, 1);
    w.advance_ms(500);
    let (mut while_down, mut decisions_down) = (0, 0);
    for step in 0..600 {
        let down = (step / 30) % 2 == 1; // 300 ms down, 300 ms up
        w.fleet.server(&addr(0)).expect("server").fault = if down { Fault::ServerError } else { Fault::None };
        let o = route(&mut w, 0, step % 2, &chat(MODEL));
        if down {
            decisions_down += 1;
            if o.upstream_header(DEST).is_some_and(|d| d.starts_with(&addr(0))) {
                while_down += 1;
            }
        }
        w.advance_ms(10);
    }
    let share = while_down as f64 / decisions_down as f64;
    eprintln!("flapping every 300 ms: {while_down} of {decisions_down} decisions while it was down went to it ({:.0}%)", share * 100.0);
    assert!(share < 0.2, "{share}");
}

#[test]
fn the_cli_exits_non_zero_when_a_vm_refuses_its_configuration() {
    let run = |config: &str| {
        std::process::Command::new(epp_tests::paths::target_bin("host-sim"))
            .args(["--wasm", &epp_tests::paths::epp_wasm().display().to_string(), "--requests", "1", "--quiet", "--config", config])
            .output()
            .expect("host-sim runs")
    };
    let bad = run(r#"{"stale_after_ms": 0}"#);
    assert!(!bad.status.success(), "a refused configuration is a failure");
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("refused its configuration") && said.contains("stale_after_ms"), "{said}");
    let good = run("{}");
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
}
