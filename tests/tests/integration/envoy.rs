//! The module in a real Envoy 1.40 (V8), with simulated vLLM servers behind it.
//! Each test starts its own servers and Envoy on loopback ports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use epp_tests::client::chat;
use epp_tests::real_envoy::{addrs, assert_openai_error, load_directly, served_by, start, MODEL};
use epp_tests::soak::rss_mib;
use epp_tests::{wait_for, Client, Envoy, EnvoyOptions, Sim};
use serde_json::json;

#[test]
fn traffic_follows_load_within_a_second() {
    let sims: Vec<Sim> = (0..3).map(|_| Sim::start(&["--max-num-seqs", "4"])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let envoy = start(&refs, json!({}));

    let idle = served_by(&envoy, MODEL, 30);
    assert!(idle.len() >= 2, "idle servers share the traffic: {idle:?}");

    // Load the first server from outside the gateway: 4 running, 16 waiting.
    let busy = &sims[0];
    let load = load_directly(busy, MODEL, 20, 300);
    wait_for("the load to land", Duration::from_secs(5), || {
        (busy.metric("vllm:num_requests_waiting") >= 10.0).then_some(())
    });
    let loaded_at = Instant::now();
    thread::sleep(Duration::from_millis(1000).saturating_sub(loaded_at.elapsed()));
    let after = served_by(&envoy, MODEL, 30);
    assert_eq!(after.get(&busy.addr), None, "a second after the load, none goes to it: {after:?}");
    for h in load {
        assert_eq!(h.join().map(|r| r.status).unwrap_or(0), 200);
    }
}

#[test]
fn lora_requests_go_where_the_adapter_runs() {
    let a = Sim::start(&["--lora", "sql-lora,tweet-lora", "--max-loras", "2"]);
    let b = Sim::start(&["--lora", "sql-lora,tweet-lora", "--max-loras", "1"]);
    let base_only = Sim::start(&[]);
    let envoy = start(&[&a, &b, &base_only], json!({}));

    // sql-lora runs on `a` (a slot still free); `b`'s only slot holds tweet-lora.
    let _sql = load_directly(&a, "sql-lora", 1, 2000);
    let _tweet = load_directly(&b, "tweet-lora", 1, 2000);
    wait_for("adapters to run", Duration::from_secs(5), || {
        let running = |s: &Sim| s.metric("vllm:num_requests_running") >= 1.0;
        (running(&a) && running(&b)).then_some(())
    });
    thread::sleep(Duration::from_millis(300));

    let sql = served_by(&envoy, "sql-lora", 20);
    assert!(sql.get(&a.addr).copied().unwrap_or(0) >= 18, "sql-lora goes to the server running it: {sql:?}");
    assert_eq!(sql.get(&base_only.addr), None, "never to a server without the adapter: {sql:?}");
    // Base-model requests may go anywhere, including the server without adapters.
    let base = served_by(&envoy, MODEL, 20);
    assert!(base.contains_key(&base_only.addr), "{base:?}");
    assert_openai_error(&envoy.post("/v1/chat/completions", &chat("nope-lora", "x", 1)), 404, "model_not_found");
}

#[test]
fn bad_requests_get_openai_errors_and_never_reach_a_server() {
    let sims = [Sim::start(&[]), Sim::start(&[])];
    let refs: Vec<&Sim> = sims.iter().collect();
    let envoy = start(&refs, json!({"max_body_bytes": 4096}));
    let upstream = || envoy.stat("cluster.llm_pool.upstream_rq_total");
    let before = upstream();
    let c = envoy.client();
    let post = |body: &[u8]| c.send(&envoy.url("/v1/chat/completions"), &[("content-type", "application/json")], Some(body));

    assert_openai_error(&post(b"{not json"), 400, "invalid_json");
    assert_openai_error(&post(br#"{"messages":[]}"#), 400, "missing_model");
    assert_openai_error(&post(br#"{"model":7}"#), 400, "invalid_model");
    assert_openai_error(&post(br#"{"model":"gpt-9","messages":[]}"#), 404, "model_not_found");
    let big = chat(MODEL, &"x".repeat(8192), 1).to_string();
    assert_openai_error(&post(big.as_bytes()), 413, "request_too_large");
    let completions = c.send(&envoy.url("/v1/completions"), &[], Some(br#"{"prompt":"x"}"#));
    assert_openai_error(&completions, 400, "missing_model");
    assert_eq!(upstream(), before, "no rejected request reached a model server");

    // Every server's metrics fail (HTTP 500) while the servers serve: a metrics outage is
    // not a serving outage. Requests fail open over them, and the log says why, once.
    for s in &sims {
        s.set_metrics_fault("error");
    }
    let fail_open = envoy.stat("wasmcustom.wasm_epp.fail_open");
    wait_for("failing open once every server's metrics fail", Duration::from_secs(5), || {
        let r = envoy.post("/v1/chat/completions", &chat(MODEL, "hi", 1));
        assert_eq!(r.status, 200, "{}", r.body);
        (envoy.stat("wasmcustom.wasm_epp.fail_open") > fail_open).then_some(())
    });
    wait_for("the reason in the log", Duration::from_secs(5), || {
        envoy.log().lines().any(|l| l.contains("all endpoints' metrics fail") && l.contains("HTTP 500")).then_some(())
    });
    assert_openai_error(&post(br#"{"model":"gpt-9","messages":[]}"#), 404, "model_not_found");

    for s in &sims {
        s.set_metrics_fault("ok");
    }
    wait_for("recovery", Duration::from_secs(5), || {
        (envoy.post("/v1/chat/completions", &chat(MODEL, "hi", 1)).status == 200).then_some(())
    });
}

#[test]
fn a_spoofed_destination_header_has_no_effect() {
    let bad = Sim::start(&[]);
    let good = Sim::start(&[]);
    let envoy = start(&[&bad, &good], json!({}));
    bad.set_metrics_fault("garbage");
    wait_for("the garbage server to be avoided", Duration::from_secs(5), || {
        (served_by(&envoy, MODEL, 10).get(&bad.addr).is_none()).then_some(())
    });
    let body = chat(MODEL, "hi", 1).to_string();
    for spoof in [bad.addr.as_str(), "127.0.0.1:1", "10.1.2.3:80,127.0.0.1:1"] {
        for _ in 0..10 {
            let r = envoy.client().send(
                &envoy.url("/v1/chat/completions"),
                &[("content-type", "application/json"), ("x-gateway-destination-endpoint", spoof)],
                Some(body.as_bytes()),
            );
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.served_by(), Some(good.addr.as_str()), "spoofed {spoof}");
        }
    }
}

#[test]
fn a_killed_server_is_routed_around_without_losing_a_request() {
    let a = Sim::start(&[]);
    let mut b = Sim::start(&[]);
    let c = Sim::start(&[]);
    let envoy = start(&[&a, &b, &c], json!({}));
    let url = envoy.url("/v1/chat/completions");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            thread::spawn(move || {
                let client = Client::default();
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = client.post_json(&url, &chat(MODEL, "keep going", 6));
                    statuses.push((r.status, r.body.chars().take(200).collect::<String>()));
                }
                statuses
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(1000));
    b.kill();
    thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(u16, String)> = clients.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect();
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(results.len() > 50, "enough traffic: {}", results.len());
    assert!(failed.is_empty(), "{} of {} failed: {:?}", failed.len(), results.len(), &failed[..failed.len().min(3)]);
}

#[test]
fn bodiless_requests_are_routed_to_a_healthy_server() {
    let down = Sim::start(&[]);
    let up = Sim::start(&[]);
    let envoy = start(&[&down, &up], json!({}));
    down.set_metrics_fault("error");
    wait_for("the failing server to be avoided", Duration::from_secs(5), || {
        let all_up = (0..10).all(|_| envoy.client().get(&envoy.url("/v1/models")).served_by() == Some(up.addr.as_str()));
        all_up.then_some(())
    });
    for _ in 0..10 {
        let r = envoy.client().get(&envoy.url("/v1/models"));
        assert_eq!(r.status, 200);
        assert_eq!(r.served_by(), Some(up.addr.as_str()));
        assert_eq!(r.json()["data"][0]["id"], MODEL);
        assert_eq!(envoy.client().get(&envoy.url("/health")).status, 200);
    }
}

#[test]
fn the_module_survives_servers_with_broken_metrics() {
    let garbage = Sim::start(&[]);
    let huge = Sim::start(&[]);
    let hang = Sim::start(&[]);
    let fine = Sim::start(&[]);
    let envoy = start(&[&garbage, &huge, &hang, &fine], json!({"scrape_timeout_ms": 300}));
    garbage.set_metrics_fault("garbage");
    huge.set_metrics_fault("huge");
    hang.set_metrics_fault("hang");
    wait_for("only the fine server to be used", Duration::from_secs(10), || {
        (served_by(&envoy, MODEL, 10).keys().all(|k| *k == fine.addr)).then_some(())
    });
    let r = envoy.post("/v1/chat/completions", &json!({"model": MODEL, "messages": [{"role": "user", "content": "s"}], "stream": true, "max_tokens": 3}));
    assert_eq!(r.status, 200);
    assert!(r.body.contains("data: [DONE]"), "streams pass through: {}", r.body);
    // Healed, the garbage server gets traffic again.
    garbage.set_metrics_fault("ok");
    wait_for("the healed server to be used again", Duration::from_secs(10), || {
        served_by(&envoy, MODEL, 10).contains_key(&garbage.addr).then_some(())
    });
    let log = envoy.log();
    assert!(!log.contains("panicked") && !log.contains("Uncaught"), "no VM trapped:\n{log}");
}

#[test]
fn a_bad_plugin_configuration_stops_envoy_with_the_field_named() {
    let sim = Sim::start(&[]);
    for (plugin, field) in [
        (json!({"scrape_interval_ms": 0}), "scrape_interval_ms"),
        (json!({"scrape_intervall_ms": 50}), "scrape_intervall_ms"),
        (json!({"engine": "tgi"}), "tgi"),
    ] {
        let options = EnvoyOptions { plugin, ..Default::default() };
        let log = match Envoy::try_start(&addrs(&[&sim]), options) {
            Ok(envoy) => panic!("Envoy started with a bad configuration:\n{}", envoy.log()),
            Err(log) => log,
        };
        assert!(log.contains("invalid plugin configuration") && log.contains(field), "{field}:\n{log}");
    }
}

#[test]
fn the_original_dst_pool_variant_routes_by_load() {
    let busy = Sim::start(&["--max-num-seqs", "2"]);
    let idle = Sim::start(&[]);
    let envoy = Envoy::start(
        &addrs(&[&busy, &idle]),
        EnvoyOptions { config: "envoy-original-dst.yaml", ..Default::default() },
    );
    envoy.wait_for_table();
    let _load = load_directly(&busy, MODEL, 8, 300);
    wait_for("the load to land", Duration::from_secs(5), || {
        (busy.metric("vllm:num_requests_waiting") >= 4.0).then_some(())
    });
    // A few scrape intervals for the table to show it.
    thread::sleep(Duration::from_millis(300));
    let counts = served_by(&envoy, MODEL, 10);
    assert_eq!(counts.get(&busy.addr), None, "{counts:?}");
    let r = envoy.client().send(
        &envoy.url("/v1/chat/completions"),
        &[("content-type", "application/json"), ("x-gateway-destination-endpoint", &busy.addr)],
        Some(chat(MODEL, "hi", 1).to_string().as_bytes()),
    );
    assert_eq!(r.served_by(), Some(idle.addr.as_str()), "the client's header is replaced");
}

/// Posts chat requests from `threads` clients until `stop`, recording (when it was sent,
/// who served it, its status) for each.
fn traffic(envoy: &Envoy, threads: usize, stop: &Arc<AtomicBool>) -> Vec<thread::JoinHandle<Vec<(Instant, String, u16)>>> {
    (0..threads)
        .map(|_| {
            let url = envoy.url("/v1/chat/completions");
            let stop = stop.clone();
            thread::spawn(move || {
                let client = Client::new(Duration::from_secs(30));
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let r = client.post_json(&url, &chat(MODEL, "hello", 2));
                    seen.push((sent, r.served_by().unwrap_or("").to_string(), r.status));
                }
                seen
            })
        })
        .collect()
}

fn joined(handles: Vec<thread::JoinHandle<Vec<(Instant, String, u16)>>>) -> Vec<(Instant, String, u16)> {
    let mut all: Vec<_> = handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect();
    all.sort_by_key(|(t, _, _)| *t);
    all
}

#[test]
fn without_a_singleton_four_workers_elect_one_scraper() {
    let sims: Vec<Sim> = (0..2).map(|_| Sim::start(&[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let envoy = Envoy::start(&addrs(&refs), EnvoyOptions { concurrency: 4, ..Default::default() });
    envoy.wait_for_table();
    let config = std::fs::read_to_string(envoy.dir.join("envoy.yaml")).expect("the rendered config");
    assert!(!config.contains("\nbootstrap_extensions:") && !config.contains("singleton: true"), "envoy.yaml declares no singleton");
    let fail_open = envoy.stat("wasmcustom.wasm_epp.fail_open");
    let before: Vec<u64> = sims.iter().map(Sim::metrics_requests).collect();
    let started = Instant::now();
    let served = served_by(&envoy, MODEL, 40);
    assert_eq!(served.len(), 2, "scheduled over both: {served:?}");
    thread::sleep(Duration::from_millis(2000).saturating_sub(started.elapsed()));
    let rates: Vec<f64> = sims
        .iter()
        .zip(&before)
        .map(|(s, b)| (s.metrics_requests() - b) as f64 / started.elapsed().as_secs_f64())
        .collect();
    // One scraper at 50 ms: 20 a second per server; four would make 80.
    assert!(rates.iter().all(|r| (14.0..=26.0).contains(r)), "/metrics per server per second: {rates:?}");
    let leaders = envoy.log().matches("this VM scrapes now").count();
    assert_eq!(leaders, 1, "one worker took the lease and kept it:\n{}", envoy.log());
    assert_eq!(envoy.stat("wasmcustom.wasm_epp.fail_open"), fail_open);
}

#[test]
fn the_pool_follows_eds_under_traffic() {
    let sims: Vec<Sim> = (0..4).map(|_| Sim::start(&[])).collect();
    let all = addrs(&sims.iter().collect::<Vec<_>>());
    let mut envoy = Envoy::start(&all[..2], EnvoyOptions { config: "envoy-dynamic.yaml", ..Default::default() });
    envoy.wait_for_table();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = traffic(&envoy, 4, &stop);
    thread::sleep(Duration::from_millis(500));

    // Two servers join.
    let joined_at = Instant::now();
    envoy.set_pool(&all);
    thread::sleep(Duration::from_millis(2000));
    // One of the first two leaves; wait until Envoy has dropped it.
    envoy.set_pool(&all[1..]);
    let admin = format!("http://{}/clusters?format=json&filter=%5Ellm_pool%24", envoy.admin);
    let dropped_at = wait_for("Envoy to drop the host", Duration::from_secs(5), || {
        let page = envoy.client().get(&admin).body;
        (!page.contains(&format!("\"port_value\": {}", all[0].rsplit_once(':').map_or("", |p| p.1)))
            && !page.contains(&format!("\"port_value\":{}", all[0].rsplit_once(':').map_or("", |p| p.1))))
        .then(Instant::now)
    });
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let seen = joined(clients);

    let failed: Vec<_> = seen.iter().filter(|(_, _, status)| *status != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), seen.len());
    for newcomer in &all[2..] {
        let first = seen.iter().find(|(_, by, _)| by == newcomer).map(|(t, _, _)| t.duration_since(joined_at));
        let first = first.unwrap_or_else(|| panic!("{newcomer} never served"));
        assert!(first < Duration::from_secs(1), "{newcomer} first served {first:?} after it joined");
        eprintln!("{newcomer} first served {} ms after the EDS update", first.as_millis());
    }
    let after_drop = seen.iter().filter(|(t, by, _)| *t > dropped_at && by == &all[0]).count();
    assert_eq!(after_drop, 0, "the removed server got requests after Envoy dropped it");
    eprintln!("{} requests, none failed", seen.len());
}

#[test]
fn a_new_plugin_configuration_takes_effect_under_traffic() {
    let sims: Vec<Sim> = (0..3).map(|_| Sim::start(&[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let mut envoy = Envoy::start(&addrs(&refs), EnvoyOptions { config: "envoy-dynamic.yaml", ..Default::default() });
    envoy.wait_for_table();
    let explained = |envoy: &Envoy| envoy.post("/v1/chat/completions", &chat(MODEL, "hi", 1)).header("x-wasm-epp-explain").is_some();
    assert!(!explained(&envoy));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = traffic(&envoy, 4, &stop);
    thread::sleep(Duration::from_millis(300));
    let fail_open = envoy.stat("wasmcustom.wasm_epp.fail_open");

    // A new profile and the explain header, pushed over ECDS.
    envoy.set_plugin(json!({"explain": true, "scheduler": "gie-default"}));
    let took = Instant::now();
    wait_for("the new configuration", Duration::from_secs(10), || explained(&envoy).then_some(()));
    eprintln!("new configuration in effect after {} ms", took.elapsed().as_millis());
    let text = envoy.post("/v1/chat/completions", &chat(MODEL, "hi", 1));
    let text = text.header("x-wasm-epp-explain").unwrap_or_default().to_string();
    assert!(text.contains("kv-cache-utilization-scorer") && !text.contains("running-requests-scorer"), "gie-default: {text}");
    thread::sleep(Duration::from_millis(1000));
    // And back, once more.
    envoy.set_plugin(json!({}));
    wait_for("the old configuration", Duration::from_secs(10), || (!explained(&envoy)).then_some(()));
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen = joined(clients);
    let failed: Vec<_> = seen.iter().filter(|(_, _, status)| *status != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), seen.len());
    assert_eq!(envoy.stat("wasmcustom.wasm_epp.fail_open"), fail_open, "the table stayed fresh through both pushes");
    assert!(!envoy.log().contains("panicked"), "{}", envoy.log());
}

/// A test CA and certificates signed by it, made with the openssl command: (ca, server
/// cert, server key, client cert, client key) paths in `dir`.
fn test_pki(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs (build.sh installs it)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(&["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=wasm-epp test CA", "-keyout", "ca.key", "-out", "ca.pem"]);
    for (name, ext) in [("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"), ("client", "subjectAltName=URI:spiffe://cluster.local/ns/gateway/sa/wasm-epp\nextendedKeyUsage=clientAuth")] {
        openssl(&["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", &format!("/CN={name}"), "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr")]);
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext file");
        openssl(&["x509", "-req", "-in", &format!("{name}.csr"), "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", &format!("{name}.ext"), "-out", &format!("{name}.pem")]);
    }
    ["ca.pem", "server.pem", "server.key", "client.pem", "client.key"].map(|f| dir.join(f))
}

/// An Envoy in front of `sim` that accepts only mutual TLS from clients with a
/// certificate of the test CA, as a mesh sidecar in STRICT mode does. Returns it and its
/// address.
fn strict_sidecar(sim: &Sim, pki: &[std::path::PathBuf; 5], dir: &std::path::Path) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
    let (host, sim_port) = sim.addr.rsplit_once(':').expect("ip:port");
    let [ca, cert, key, _, _] = pki.each_ref().map(|p| p.display().to_string());
    let config = format!(
        r#"
static_resources:
  listeners:
  - name: strict
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates: [{{ certificate_chain: {{ filename: {cert} }}, private_key: {{ filename: {key} }} }}]
            validation_context: {{ trusted_ca: {{ filename: {ca} }} }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: strict
          route_config:
            virtual_hosts: [{{ name: pod, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: pod, timeout: 300s }} }}] }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: pod
    type: STATIC
    load_assignment:
      cluster_name: pod
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {sim_port} }} }} }} }}] }}]
"#
    );
    let path = dir.join(format!("sidecar-{port}.yaml"));
    std::fs::write(&path, config).expect("sidecar config");
    let child = std::process::Command::new(epp_tests::paths::envoy_bin())
        .arg("-c")
        .arg(&path)
        .args(["--disable-hot-restart", "--concurrency", "1", "--base-id", &port.to_string(), "-l", "warn"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sidecar envoy starts");
    let addr = format!("127.0.0.1:{port}");
    wait_for("the sidecar to listen", Duration::from_secs(20), || std::net::TcpStream::connect(&addr).ok().map(|_| ()));
    (child, addr)
}

/// The transport socket the pool and metrics clusters use to reach STRICT pods: mutual
/// TLS with the test CA's certificates (under Istio: the SDS secrets `default` and
/// `ROOTCA`, envoy/istio/).
fn mesh_tls(pki: &[std::path::PathBuf; 5], indent: usize) -> String {
    let [ca, _, _, cert, key] = pki.each_ref().map(|p| p.display().to_string());
    let pad = " ".repeat(indent);
    format!(
        "{pad}transport_socket:\n{pad}  name: envoy.transport_sockets.tls\n{pad}  typed_config:\n{pad}    \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n{pad}    common_tls_context:\n{pad}      tls_certificates: [{{ certificate_chain: {{ filename: {cert} }}, private_key: {{ filename: {key} }} }}]\n{pad}      validation_context: {{ trusted_ca: {{ filename: {ca} }} }}\n"
    )
}

#[test]
fn the_scraper_reaches_pods_that_require_mutual_tls() {
    // Its own metrics cluster with the mesh's transport socket.
    scrape_over_mutual_tls(json!({}), true);
}

#[test]
fn the_scraper_reaches_pods_that_require_mutual_tls_through_the_pool_cluster() {
    // Or the pool's cluster itself (override_host reads the address the scraper names):
    // under Istio that cluster already carries the mesh's mutual TLS.
    scrape_over_mutual_tls(json!({"metrics_cluster": "llm_pool"}), false);
}

fn scrape_over_mutual_tls(plugin: serde_json::Value, tls_metrics_cluster: bool) {
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("wasm-epp-mtls-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pki = test_pki(&dir);
    let sims: Vec<Sim> = (0..2).map(|_| Sim::start(&[])).collect();
    let sidecars: Vec<(std::process::Child, String)> = sims.iter().map(|s| strict_sidecar(s, &pki, &dir)).collect();
    let pods: Vec<String> = sidecars.iter().map(|(_, a)| a.clone()).collect();

    // Plain text is refused, as STRICT mode refuses it: without the mesh's transport
    // socket the scraper gets no page.
    let plain = Client::new(Duration::from_secs(2)).get(&format!("http://{}/metrics", pods[0]));
    assert_ne!(plain.status, 200, "the sidecar must refuse plain text");

    let mut insert_after = vec![("  - name: llm_pool".to_string(), mesh_tls(&pki, 4))];
    if tls_metrics_cluster {
        insert_after.push(("  - name: wasm_epp_metrics".into(), mesh_tls(&pki, 4)));
    }
    let tls = EnvoyOptions { plugin, insert_after, ..Default::default() };
    let envoy = Envoy::start(&pods, tls);
    envoy.wait_for_table();
    let served = served_by(&envoy, MODEL, 20);
    let total: usize = served.values().sum();
    assert_eq!(total, 20, "{served:?}");
    // Load one server: the picker sees it through the encrypted scrape and avoids it.
    let busy = &sims[0];
    let _load = load_directly(busy, MODEL, 20, 300);
    wait_for("the load to show", Duration::from_secs(5), || (busy.metric("vllm:num_requests_waiting") >= 10.0).then_some(()));
    thread::sleep(Duration::from_millis(500));
    let after = served_by(&envoy, MODEL, 20);
    assert_eq!(after.get(&busy.addr), None, "the loaded pod, seen through mTLS, gets nothing: {after:?}");
    let scrapes_cluster = if tls_metrics_cluster { "wasm_epp_metrics" } else { "llm_pool" };
    assert!(envoy.stat(&format!("cluster.{scrapes_cluster}.ssl.handshake")) > 0, "the scrapes went over TLS");
    assert_eq!(envoy.stat("cluster.wasm_epp_metrics.upstream_rq_total") > 0, tls_metrics_cluster);
    for (mut child, _) in sidecars {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_a_singleton_the_singleton_scrapes() {
    let sims: Vec<Sim> = (0..2).map(|_| Sim::start(&[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let envoy = Envoy::start(&addrs(&refs), EnvoyOptions { config: "envoy-singleton.yaml", concurrency: 2, ..Default::default() });
    envoy.wait_for_table();
    let served = served_by(&envoy, MODEL, 20);
    assert_eq!(served.values().sum::<usize>(), 20);
    let log = envoy.log();
    let scrapes_now: Vec<&str> = log.lines().filter(|l| l.contains("this VM scrapes now")).collect();
    assert_eq!(scrapes_now.len(), 1, "{scrapes_now:?}");
    assert!(scrapes_now[0].contains("wasm log scraper "), "the singleton (root_id scraper) holds the lease: {}", scrapes_now[0]);
}

#[test]
fn a_scraper_root_id_on_the_http_filter_passes_requests_and_says_what_to_change() {
    let sims: Vec<Sim> = (0..2).map(|_| Sim::start(&[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let options = EnvoyOptions { replace: vec![("root_id: picker".into(), "root_id: scraper".into())], ..Default::default() };
    let envoy = Envoy::start(&addrs(&refs), options);
    for _ in 0..10 {
        // A client's destination is never honoured, misplaced or not.
        let r = envoy.client().send(
            &envoy.url("/v1/chat/completions"),
            &[("content-type", "application/json"), ("x-gateway-destination-endpoint", &sims[1].addr)],
            Some(chat(MODEL, "hi", 1).to_string().as_bytes()),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.header("x-seen-destination").is_none(), "{:?}", r.headers);
    }
    let log = envoy.log();
    assert!(!log.contains("panicked"), "no trap:\n{log}");
    let told = log.lines().filter(|l| l.contains("give the HTTP filter root_id \"picker\"")).count();
    assert!((1..=2).contains(&told), "said once per worker VM ({told}):\n{log}");
}


#[test]
fn a_page_of_ten_thousand_models_neither_stalls_envoy_nor_opens_the_model_filter() {
    let sims: Vec<Sim> = (0..3).map(|_| Sim::start(&[])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let envoy = start(&refs, json!({}));
    sims[0].set_metrics_fault("many-models");
    let misses = || envoy.stat("server.main_thread.watchdog_miss") + envoy.stat("server.worker_0.watchdog_miss") + envoy.stat("server.worker_1.watchdog_miss");
    let (fail_open, missed) = (envoy.stat("wasmcustom.wasm_epp.fail_open"), misses());
    let mut ready_ms = vec![];
    let until = Instant::now() + Duration::from_secs(4);
    let mut served = 0;
    while Instant::now() < until {
        let t = Instant::now();
        let ready = envoy.client().get(&format!("http://{}/ready", envoy.admin));
        ready_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(ready.status, 200, "{}", ready.body);
        let r = envoy.post("/v1/chat/completions", &chat(MODEL, "hi", 1));
        assert_eq!(r.status, 200, "a valid request while one page lists 10,000 models: {}", r.body);
        assert_openai_error(&envoy.post("/v1/chat/completions", &chat("tenant-00042/fine-tuned-model-x", "hi", 1)), 404, "model_not_found");
        served += 1;
    }
    ready_ms.sort_by(f64::total_cmp);
    eprintln!(
        "/ready over {} probes with a 10,000-model page scraped: p50 {:.2} ms, max {:.2} ms; {served} requests served",
        ready_ms.len(),
        ready_ms[ready_ms.len() / 2],
        ready_ms[ready_ms.len() - 1]
    );
    assert!(sims[0].metrics_requests() >= 10, "the page was scraped throughout");
    assert_eq!(envoy.stat("wasmcustom.wasm_epp.fail_open"), fail_open, "no request failed open");
    assert_eq!(misses(), missed, "Envoy's watchdog saw no thread stall");
}

/// Envoy's RSS (MiB) after each round of 1,000 one-off 16 KB prompts (256 blocks each,
/// as many as the prefix scorer matches), while every server claims four billion KV
/// blocks. The first sample is after a warm-up round.
fn rss_under_a_kv_cache_claim(scheduler: serde_json::Value, rounds: usize) -> Vec<u64> {
    let sims: Vec<Sim> = (0..2).map(|_| Sim::start(&["--instant"])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let envoy = start(&refs, json!({"max_body_bytes": 1 << 20, "scheduler": scheduler}));
    for s in &sims {
        s.set_metrics_fault("huge-kv-cache");
    }
    thread::sleep(Duration::from_millis(300));
    let send = |from: usize, to: usize| {
        for i in from..to {
            let prompt = format!("{i:08} {}", "one-off prompt text ".repeat(820));
            let r = envoy.post("/v1/chat/completions", &chat(MODEL, &prompt, 1));
            assert_eq!(r.status, 200, "{}", r.body);
        }
    };
    let run = |round: usize| {
        thread::scope(|s| {
            for t in 0..16 {
                let from = round * 1000 + t * 1000 / 16;
                s.spawn(move || send(from, from + 1000 / 16));
            }
        })
    };
    run(0);
    (1..=rounds)
        .map(|round| {
            run(round);
            rss_mib(envoy.pid())
        })
        .collect()
}

#[test]
fn a_server_reporting_four_billion_kv_blocks_does_not_grow_envoys_memory() {
    // 20,000 prompts are 5 million blocks, 3.5 times what both workers' indexes keep at
    // the default budget (16 MiB each, about 700,000 blocks).
    let capped = rss_under_a_kv_cache_claim(json!("default"), 20);
    let grown = |s: &[u64]| s.last().copied().unwrap_or(0).saturating_sub(s[0]);
    eprintln!("Envoy RSS (MiB) every 1,000 one-off prompts, default budget: {capped:?}");
    // The same with a budget past what the attack needs: the test sees the growth it guards.
    let lifted = rss_under_a_kv_cache_claim(
        json!({
            "plugins": [{"type": "prefix-cache-scorer", "parameters": {"maxIndexBytes": 1u64 << 30}}, {"type": "max-score-picker"}],
            "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "prefix-cache-scorer"}, {"pluginRef": "max-score-picker"}]}]
        }),
        20,
    );
    eprintln!("Envoy RSS (MiB) every 1,000 one-off prompts, budget lifted to 1 GiB: {lifted:?}");
    assert!(grown(&capped) < 32, "Envoy's memory grew {} MiB: {capped:?}", grown(&capped));
    assert!(grown(&lifted) > 2 * grown(&capped) + 16, "without the cap it grows: {lifted:?} against {capped:?}");
}

#[test]
fn a_short_soak_with_faults_loses_nothing_and_holds_memory() {
    let report = epp_tests::soak::soak(Duration::from_secs(24), 16);
    eprintln!("{}", serde_json::to_string(&report).unwrap_or_default());
    assert!(report.valid_sent > 1000, "{report:?}");
    assert_eq!((report.valid_lost, report.invalid_misanswered, report.traps), (0, 0, 0), "{report:?}");
    assert!(report.rss_growth_second_half_mib <= 16, "{report:?}");
}

/// The benchmarks' ext_proc picker (the architecture of GIE's EPP) decides as the module
/// does, in both body modes: traffic avoids a loaded server, a bad body gets the module's
/// answer and reaches no server.
#[test]
fn the_extproc_picker_routes_by_load_and_refuses_bad_bodies_in_both_body_modes() {
    use epp_tests::extproc::{BodyMode, ExtProc};
    let sims: Vec<Sim> = (0..3).map(|_| Sim::start(&["--max-num-seqs", "4"])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let load = load_directly(&sims[0], MODEL, 20, 1500);
    let loaded = || sims[0].metric("vllm:num_requests_waiting") >= 10.0;
    wait_for("the load to land", Duration::from_secs(5), || loaded().then_some(()));
    for mode in [BodyMode::Duplex, BodyMode::Buffered] {
        // GIE's profile: no prefix placement, which would send a long first-seen prompt
        // to its rendezvous home even while that server is the loaded one.
        let picker = ExtProc::start(mode, &addrs(&refs), &json!({"scheduler": "gie-default"}));
        let envoy = Envoy::start(&addrs(&refs), picker.envoy_options(2));
        // Until its first scrapes the picker fails open, as the module does.
        let served = wait_for("the ext_proc picker to route by load", Duration::from_secs(10), || {
            let served = served_by(&envoy, MODEL, 20);
            (!served.contains_key(&sims[0].addr)).then_some(served)
        });
        assert!(loaded(), "{mode:?}: the server was still loaded");
        assert!(served.len() == 2, "{mode:?}: the idle servers share it: {served:?}");
        let big = chat(MODEL, &"x".repeat(200_000), 1);
        let r = envoy.post("/v1/chat/completions", &big);
        assert_eq!(r.status, 200, "{mode:?}: a 200 KB body: {}\n{}", r.body, envoy.log());
        let before = envoy.stat("cluster.llm_pool.upstream_rq_total");
        let r = envoy.client().send(&envoy.url("/v1/chat/completions"), &[("content-type", "application/json")], Some(b"{\"model\": "));
        assert_openai_error(&r, 400, "invalid_json");
        assert_openai_error(&envoy.post("/v1/chat/completions", &chat("gpt-9", "x", 1)), 404, "model_not_found");
        assert_eq!(envoy.stat("cluster.llm_pool.upstream_rq_total"), before, "{mode:?}: refused requests reached no server");
    }
    // The load outlasts the test on purpose; its requests end with the servers.
    drop(load);
}
