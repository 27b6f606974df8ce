//! The scheduler's protocol features in a real Envoy 1.40: shedding by objective, model
//! rewrites, the fallback list, and in-flight accounting across Envoy's workers.

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use epp_tests::client::chat;
use epp_tests::real_envoy::{addrs, assert_openai_error, load_directly, start, MODEL};
use epp_tests::{wait_for, Envoy, EnvoyOptions, Sim};
use serde_json::json;

const OBJECTIVE: &str = "x-gateway-inference-objective";

fn post_as(envoy: &Envoy, objective: &str, body: &serde_json::Value) -> epp_tests::Reply {
    let headers = [("content-type", "application/json"), (OBJECTIVE, objective)];
    envoy.client().send(&envoy.url("/v1/chat/completions"), &headers, Some(body.to_string().as_bytes()))
}

#[test]
fn sheddable_requests_get_429_while_every_server_is_saturated() {
    let sims: Vec<Sim> = (0..2).map(|_| Sim::start(&["--max-num-seqs", "1"])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let envoy = start(&refs, json!({"objectives": {"batch": -1, "interactive": 10}}));

    // Idle pool: batch work is welcome.
    assert_eq!(post_as(&envoy, "batch", &chat(MODEL, "summarise", 2)).status, 200);

    // Six requests on each server: one running, five waiting (GIE's queue threshold).
    let load: Vec<_> = sims.iter().flat_map(|s| load_directly(s, MODEL, 6, 40)).collect();
    wait_for("both servers saturated in the table", Duration::from_secs(5), || {
        let saturated = sims.iter().all(|s| s.metric("vllm:num_requests_waiting") >= 5.0);
        saturated.then(|| thread::sleep(Duration::from_millis(300)))
    });
    let upstream_before = envoy.stat("cluster.llm_pool.upstream_rq_total");
    let shed = post_as(&envoy, "batch", &chat(MODEL, "summarise", 2));
    assert_openai_error(&shed, 429, "rate_limit_exceeded");
    assert_eq!(envoy.stat("cluster.llm_pool.upstream_rq_total"), upstream_before, "a shed request is never forwarded");

    // Priority 0 (no objective) and positive priorities still go through, after the queue.
    let interactive = post_as(&envoy, "interactive", &chat(MODEL, "hi", 1));
    assert_eq!(interactive.status, 200, "{}", interactive.body);
    assert_eq!(envoy.post("/v1/chat/completions", &chat(MODEL, "hi", 1)).status, 200);
    for h in load {
        assert_eq!(h.join().map(|r| r.status).unwrap_or(0), 200);
    }
}

#[test]
fn model_rewrite_splits_traffic_and_rewrites_the_body() {
    let sims: Vec<Sim> = (0..2).map(|_| Sim::start(&["--lora", "sql-lora"])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let rules = json!([{"model": "chat", "targets": [{"model": MODEL, "weight": 1}, {"model": "sql-lora", "weight": 1}]}]);
    let envoy = start(&refs, json!({"model_rewrites": rules}));

    let mut served: HashMap<String, usize> = HashMap::new();
    for i in 0..40 {
        // `model` first, then a long field: a wrong content-length would cut or stall it.
        let body = json!({"model": "chat", "messages": [{"role": "user", "content": "x".repeat(3000 + i)}], "max_tokens": 1});
        let r = envoy.post("/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        *served.entry(r.json()["model"].as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    assert_eq!(served.values().sum::<usize>(), 40);
    for model in [MODEL, "sql-lora"] {
        assert!(served.get(model).copied().unwrap_or(0) >= 8, "an even split reaches both targets: {served:?}");
    }
    // Models without a rule are left alone.
    let r = envoy.post("/v1/chat/completions", &chat("sql-lora", "hi", 1));
    assert_eq!(r.json()["model"], "sql-lora");
}

#[test]
fn the_destination_header_lists_the_choice_then_fallbacks() {
    let sims: Vec<Sim> = (0..3).map(|_| Sim::start(&[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    for (fallbacks, expect) in [(2, 3), (0, 1)] {
        let envoy = start(&refs, json!({"max_fallbacks": fallbacks}));
        let r = envoy.post("/v1/chat/completions", &chat(MODEL, "hi", 1));
        assert_eq!(r.status, 200, "{}", r.body);
        let list: Vec<&str> = r.header("x-seen-destination").unwrap_or_default().split(',').collect();
        assert_eq!(list.len(), expect, "{list:?}");
        assert_eq!(Some(list[0]), r.served_by(), "the first address serves");
        let mut distinct = list.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), list.len(), "no address twice: {list:?}");
        assert!(list.iter().all(|a| addrs(&refs).iter().any(|x| x == a)));
    }
}

#[test]
fn a_burst_between_scrapes_spreads_over_every_worker() {
    // One scrape a second: a burst lands on a table that cannot show it.
    let sims: Vec<Sim> = (0..3).map(|_| Sim::start(&["--max-num-seqs", "64"])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let plugin = json!({"scrape_interval_ms": 1000, "stale_after_ms": 10000});
    let envoy = Envoy::start(&addrs(&refs), EnvoyOptions { plugin, concurrency: 4, ..Default::default() });
    envoy.wait_for_table();
    // Two servers a little busy at scrape time, one idle: without in-flight counts every
    // worker would send the whole burst to the idle one.
    let load: Vec<_> = sims[1..].iter().flat_map(|s| load_directly(s, MODEL, 2, 400)).collect();
    thread::sleep(Duration::from_millis(2200));
    let burst: Vec<_> = (0..18)
        .map(|_| {
            let url = envoy.url("/v1/chat/completions");
            let client = envoy.client().clone();
            thread::spawn(move || client.post_json(&url, &chat(MODEL, "burst", 30)))
        })
        .collect();
    let mut served: HashMap<String, usize> = HashMap::new();
    for h in burst {
        let r = h.join().expect("request thread");
        assert_eq!(r.status, 200, "{}", r.body);
        *served.entry(r.served_by().unwrap_or("?").to_string()).or_default() += 1;
    }
    let idle = served.get(&sims[0].addr).copied().unwrap_or(0);
    assert!(idle < 14, "the idle server got {idle} of 18: {served:?}");
    for h in load {
        assert_eq!(h.join().map(|r| r.status).unwrap_or(0), 200);
    }
    // Every stream that ended left the in-flight gauges.
    for s in &sims {
        let gauge = format!("wasmcustom.{}", epp::stats::in_flight_gauge(&s.addr));
        wait_for("in-flight gauges back to zero", Duration::from_secs(5), || (envoy.stat(&gauge) == 0).then_some(()));
    }
}

#[test]
fn a_stream_the_client_walks_away_from_leaves_the_in_flight_count() {
    use std::io::{Read, Write};
    // One token every 50 ms: the answer is still streaming when the client leaves.
    let sim = Sim::start(&["--step-ms", "50"]);
    let envoy = start(&[&sim], json!({}));
    let gauge = format!("wasmcustom.{}", epp::stats::in_flight_gauge(&sim.addr));
    let mut body = chat(MODEL, "walk away", 2000);
    body["stream"] = json!(true);
    let body = body.to_string();
    let listener = &envoy.listener;
    let mut conn = std::net::TcpStream::connect(listener).expect("connects to Envoy");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {listener}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(body.as_bytes())).expect("sends the request");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(6).any(|w| w == b"data: ") {
        let n = conn.read(&mut buf).expect("the answer starts");
        assert!(n > 0, "Envoy closed before the first event: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&seen));
    wait_for("the stream counted in flight", Duration::from_secs(5), || (envoy.stat(&gauge) == 1).then_some(()));
    drop(conn);
    wait_for("the walked-away stream out of flight", Duration::from_secs(5), || (envoy.stat(&gauge) == 0).then_some(()));
}

/// A port free now, for a listener its peers must know before it starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

#[test]
fn replicas_send_a_prefix_where_their_peer_sent_it() {
    let ports = [free_port(), free_port()];
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    replicas_share_assignments(ports, json!({"peers": peers}), String::new());
}

#[test]
fn replicas_found_through_a_cluster_share_assignments() {
    // What a headless Service of the gateway's pods gives in Kubernetes: a cluster whose
    // hosts are the replicas, balanced round robin.
    let ports = [free_port(), free_port()];
    let hosts: Vec<String> = ports
        .iter()
        .map(|p| format!("        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }}"))
        .collect();
    let cluster = format!(
        "  - name: wasm_epp_peers\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: wasm_epp_peers\n      endpoints:\n      - lb_endpoints:\n{}",
        hosts.join("\n")
    );
    let plugin = json!({"peer_cluster": "wasm_epp_peers", "peer_cluster_calls": 2});
    replicas_share_assignments(ports, plugin, cluster);
}

#[test]
fn replicas_that_share_scrapes_scrape_each_server_once() {
    // Two replicas, each with its singleton scraper. Sharing, each server is scraped by its
    // rendezvous owner alone: 20 times a second at 50 ms, where two replicas apart make 40.
    let sims: Vec<Sim> = (0..4).map(|_| Sim::start(&[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let ports = [free_port(), free_port()];
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let token = "t0ken-t0ken-t0ken-t0ken";
    let plugin = json!({"peers": peers, "peer_token": token, "share_scrapes": true});
    let replicas: Vec<Envoy> = ports
        .iter()
        .map(|&port| {
            let envoy = Envoy::start(&addrs(&refs), EnvoyOptions { plugin: plugin.clone(), listen_port: Some(port), ..Default::default() });
            envoy.wait_for_table();
            envoy
        })
        .collect();
    thread::sleep(Duration::from_millis(1000)); // they hear each other and settle who scrapes
    let before: Vec<u64> = sims.iter().map(Sim::metrics_requests).collect();
    let started = std::time::Instant::now();
    thread::sleep(Duration::from_millis(2000));
    let seconds = started.elapsed().as_secs_f64();
    let rates: Vec<f64> = sims.iter().zip(&before).map(|(s, b)| (s.metrics_requests() - b) as f64 / seconds).collect();
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    assert!((14.0..=28.0).contains(&mean), "/metrics per server per second: {rates:?}");
    // Each replica serves the rows it scraped itself: together, every server's once.
    let own_rows = |envoy: &Envoy| {
        let (status, body) = envoy.client().get_bytes(&envoy.url("/.wasm-epp/v2/peer"), &[("x-wasm-epp-peer-token", token)]);
        assert_eq!(status, 200);
        epp::peer::Record::decode(&body).map_or(0, |r| r.rows.len())
    };
    assert_eq!(replicas.iter().map(own_rows).sum::<usize>(), sims.len());
    for envoy in &replicas {
        assert_eq!(envoy.post("/v1/chat/completions", &chat(MODEL, "hello", 1)).status, 200);
    }
}

/// Two Envoy replicas on `ports` with `peers` settings (and `extra_clusters`): prompts that
/// replica A sent where the test chose go to the same servers from replica B.
fn replicas_share_assignments(ports: [u16; 2], peers: serde_json::Value, extra_clusters: String) {
    let sims: Vec<Sim> = (0..4).map(|_| Sim::start(&[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    // The test places prompts with the subset hint, as a filter before the picker would.
    let mut plugin = json!({"peer_token": "t0ken-t0ken-t0ken-t0ken", "peer_interval_ms": 50, "trust_subset_header": true});
    if let (Some(p), Some(extra)) = (plugin.as_object_mut(), peers.as_object()) {
        p.extend(extra.clone());
    }
    let replica = |port| {
        let options = EnvoyOptions {
            plugin: plugin.clone(),
            listen_port: Some(port),
            extra_clusters: extra_clusters.clone(),
            ..Default::default()
        };
        let envoy = Envoy::start(&addrs(&refs), options);
        envoy.wait_for_table();
        envoy
    };
    let (a, b) = (replica(ports[0]), replica(ports[1]));
    // (status, bytes of prefix assignments in the replica's peer record)
    let record_bytes = |envoy: &Envoy, token: &str| {
        let (status, body) = envoy.client().get_bytes(&envoy.url("/.wasm-epp/v2/peer"), &[("x-wasm-epp-peer-token", token)]);
        (status, epp::peer::Record::decode(&body).map_or(0, |r| r.prefixes.len()))
    };
    // Without the token the path is not ours: routed to a model server, which has no such page.
    assert_eq!(record_bytes(&b, "wrong").0, 404);

    // Replica A sends four long prompts, each to a server of the test's choosing (the
    // subset hint); replica B has seen none of them. Unless B follows A, it would send
    // each to its own rendezvous home, and all four match only by chance (1 in 256).
    let prompt = |i: usize| chat(MODEL, &format!("Context {i}: {}", "the tides of the northern sea ".repeat(60)), 1);
    let subset = "x-gateway-destination-endpoint-subset";
    for (i, sim) in addrs(&refs).iter().enumerate() {
        let headers = [("content-type", "application/json"), (subset, sim.as_str())];
        let r = a.client().send(&a.url("/v1/chat/completions"), &headers, Some(prompt(i).to_string().as_bytes()));
        assert_eq!((r.status, r.served_by()), (200, Some(sim.as_str())), "{}", r.body);
    }
    let (status, exported) = record_bytes(&a, "t0ken-t0ken-t0ken-t0ken");
    assert_eq!(status, 200);
    wait_for("replica B to adopt A's assignments", Duration::from_secs(10), || {
        (record_bytes(&b, "t0ken-t0ken-t0ken-t0ken").1 >= exported).then_some(())
    });
    for (i, sim) in addrs(&refs).iter().enumerate() {
        let r = b.post("/v1/chat/completions", &prompt(i));
        assert_eq!((r.status, r.served_by()), (200, Some(sim.as_str())), "prompt {i}: {}", r.body);
    }
}
