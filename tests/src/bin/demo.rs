//! `./build.sh demo`: four simulated vLLM servers of different speed, load and adapters;
//! the same traffic through Envoy with wasm-epp and through Envoy alone (round robin);
//! where the requests went and how fast they were served.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use epp_tests::client::Streamed;
use epp_tests::{Client, Envoy, EnvoyOptions, Sim};
use serde_json::json;

use epp_tests::MODEL;
const REQUESTS: usize = 240;
const CONCURRENCY: usize = 16;

struct Server {
    sim: Sim,
    what: &'static str,
}

fn main() {
    println!("Starting four simulated vLLM servers...");
    let servers = vec![
        Server { sim: Sim::start(&["--lora", "sql-lora", "--max-num-seqs", "8"]), what: "fast, sql-lora" },
        Server { sim: Sim::start(&["--lora", "sql-lora", "--max-num-seqs", "8"]), what: "fast, busy with other tenants" },
        Server { sim: Sim::start(&["--max-num-seqs", "4", "--step-ms", "16"]), what: "slow (older GPU), 4 seqs" },
        Server { sim: Sim::start(&["--max-num-seqs", "8"]), what: "fast" },
    ];
    let endpoints: Vec<String> = servers.iter().map(|s| s.sim.addr.clone()).collect();
    for s in &servers {
        println!("  {}  {}", s.sim.addr, s.what);
    }

    let mut results = Vec::new();
    for (name, without_picker) in [("Envoy + wasm-epp", false), ("Envoy round robin", true)] {
        let envoy = Envoy::start(&endpoints, EnvoyOptions { without_picker, ..Default::default() });
        if !without_picker {
            envoy.wait_for_table();
        }
        // Another tenant keeps the second server busy, outside this gateway.
        let background = Background::start(&servers[1].sim);
        thread::sleep(Duration::from_millis(500));
        println!("\n{name}: {REQUESTS} streaming chat requests, {CONCURRENCY} at a time...");
        let started = Instant::now();
        let outcomes = drive(&envoy.url("/v1/chat/completions"));
        let elapsed = started.elapsed();
        background.stop();
        results.push((name, outcomes, elapsed));
    }

    for (name, outcomes, elapsed) in &results {
        report(name, outcomes, *elapsed, &servers);
    }
    let p90 = |i: usize| percentile(results[i].1.iter().filter_map(|o| o.ttft).collect(), 0.9);
    let (epp, rr) = (p90(0), p90(1));
    println!(
        "\np90 time to first token: {:.0} ms with wasm-epp, {:.0} ms round robin ({:.1}x lower).",
        ms(epp),
        ms(rr),
        rr.as_secs_f64() / epp.as_secs_f64().max(1e-9)
    );
}

/// The same seeded mix for both runs: 75% base model, 25% sql-lora; prompts and answers of
/// varied length.
fn jobs() -> Vec<serde_json::Value> {
    let mut seed = 0x5eed_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    (0..REQUESTS)
        .map(|_| {
            let model = if next(4) == 0 { "sql-lora" } else { MODEL };
            let prompt = "Tell me about routing. ".repeat(1 + next(40) as usize);
            json!({"model": model, "stream": true, "max_tokens": 16 + next(48),
                   "messages": [{"role": "user", "content": prompt}]})
        })
        .collect()
}

fn drive(url: &str) -> Vec<Streamed> {
    let queue = Arc::new(Mutex::new(jobs()));
    let out = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (queue, out, url) = (queue.clone(), out.clone(), url.to_string());
            thread::spawn(move || {
                let client = Client::default();
                loop {
                    let job = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some(job) = job else { break };
                    let r = client.stream(&url, &job);
                    if let Ok(mut o) = out.lock() {
                        o.push(r);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Arc::try_unwrap(out).map(|m| m.into_inner().unwrap_or_default()).unwrap_or_default()
}

struct Background {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Background {
    fn start(sim: &Sim) -> Background {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..12)
            .map(|_| {
                let (stop, url) = (stop.clone(), sim.url("/v1/chat/completions"));
                thread::spawn(move || {
                    let c = Client::default();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        c.post_json(&url, &json!({"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "batch job"}]}));
                    }
                })
            })
            .collect();
        Background { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn report(name: &str, outcomes: &[Streamed], elapsed: Duration, servers: &[Server]) {
    let ok: Vec<&Streamed> = outcomes.iter().filter(|o| o.status == 200).collect();
    println!("\n{name}: {} of {} ok in {:.1} s", ok.len(), outcomes.len(), elapsed.as_secs_f64());
    let mut failed: BTreeMap<u16, usize> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.status != 200) {
        *failed.entry(o.status).or_default() += 1;
    }
    for (status, n) in failed {
        let why = match status {
            404 => " (sql-lora sent to a server without the adapter)",
            0 => " (no answer)",
            _ => "",
        };
        println!("  {n} failed with HTTP {status}{why}");
    }
    println!("  {:<22} {:<32} {:>8} {:>12} {:>12}", "endpoint", "", "requests", "TTFT p50 ms", "TTFT p90 ms");
    let mut by: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for o in &ok {
        by.entry(o.served_by.as_str()).or_default().extend(o.ttft);
    }
    for s in servers {
        let t = by.get(s.sim.addr.as_str()).cloned().unwrap_or_default();
        println!(
            "  {:<22} {:<32} {:>8} {:>12.0} {:>12.0}",
            s.sim.addr,
            s.what,
            t.len(),
            ms(percentile(t.clone(), 0.5)),
            ms(percentile(t, 0.9))
        );
    }
    let ttft: Vec<Duration> = ok.iter().filter_map(|o| o.ttft).collect();
    let e2e: Vec<Duration> = ok.iter().map(|o| o.e2e).collect();
    println!(
        "  all: TTFT p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms; end-to-end p90 {:.0} ms",
        ms(percentile(ttft.clone(), 0.5)),
        ms(percentile(ttft.clone(), 0.9)),
        ms(percentile(ttft, 0.99)),
        ms(percentile(e2e, 0.9))
    );
}

fn percentile(mut v: Vec<Duration>, q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
