//! The decision's core timed by part, in whatever runs it: `./build.sh bench-core` runs it
//! compiled to wasm32-wasip1 under Node.js's V8 (the engine Envoy embeds, with Envoy's
//! setting: no baseline compiler) and natively. No proxy, no host calls: what is left is
//! the module's own code, so a change to the scan, the hashes or a scorer shows in
//! seconds, without Envoy's noise.
//!
//! Bodies like bench-overhead's (a system and a user message, a prompt with an escape
//! every 28 bytes), 8 endpoints, GIE's 64-byte blocks; each part the median over rounds
//! of the mean over a batch, or with `--cold` the median of single calls made after the
//! caches were taken over.

use std::hint::black_box;
use std::time::Instant;

use epp::config::Config;
use epp::prefix::block_hashes;
use epp::request::parse;
use epp::route::{Incoming, Outcome, Router};
use epp::store::MemoryStore;
use epp::table::{EndpointState, Health, Table};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const PATH: &str = "/v1/chat/completions";
const ENDPOINTS: usize = 8;
const NOW_MS: u64 = 10_000;
const ROUNDS: usize = 15;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    println!("{:>8} {:>12} {:>12} {:>12} {:>12}", "body", "parse µs", "hashes µs", "decide µs", "total µs");
    for bytes in [1024, 16 * 1024, 220 * 1024] {
        let body = chat_body(bytes);
        let batch = if quick { 20 } else { (4_000_000 / bytes).clamp(20, 2_000) };
        let (mut router, table, store) = fleet();
        let prompt_bytes = router.prompt_bytes();
        let read = || parse(PATH, body.as_bytes(), prompt_bytes).ok();
        let Some(prompt) = read().map(|b| b.prompt) else {
            eprintln!("the benchmark's body was refused");
            std::process::exit(1);
        };
        let parse_us = median_us(batch, &mut || drop(black_box(read())));
        let hashes_us = median_us(batch, &mut || drop(black_box(block_hashes(MODEL, prompt.bytes, 64, 256))));
        let mut decide = || {
            let incoming = Incoming { model: Some(MODEL), prompt, store: Some(&store), ..Default::default() };
            black_box(router.decide(Some(&table), &incoming, NOW_MS, &|_| 0))
        };
        if !matches!(decide(), Outcome::Route { fail_open: false, .. }) {
            eprintln!("the benchmark's fleet did not schedule");
            std::process::exit(1);
        }
        let decide_us = median_us(batch, &mut || drop(decide()));
        println!("{:>8} {parse_us:>12.2} {hashes_us:>12.2} {decide_us:>12.2} {:>12.2}", body.len(), parse_us + decide_us);
    }
}

/// A router with the default preset, a fresh table of `ENDPOINTS` that serve `MODEL`, and
/// the proxy's shared data.
fn fleet() -> (Router, Table, MemoryStore) {
    let addresses: Vec<String> = (1..=ENDPOINTS).map(|i| format!("10.0.0.{i}:8000")).collect();
    let config = serde_json::json!({ "endpoints": addresses }).to_string();
    let (config, profile) = Config::parse_with_profile(config.as_bytes()).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let endpoints = addresses
        .into_iter()
        .enumerate()
        .map(|(slot, address)| EndpointState {
            slot: slot as u32,
            health: Health::Healthy,
            checked_ms: NOW_MS,
            last_ok_ms: NOW_MS,
            models: vec![MODEL.into()],
            // As a picker reads a table: each row's id worked out once.
            ..EndpointState::new(&address)
        })
        .collect();
    let table = Table { published_ms: NOW_MS, generation: 1, replicas: 1, endpoints };
    (Router::new(config, profile, 7), table, MemoryStore::default())
}

/// A chat body of about `bytes` bytes, as bench-overhead sends.
fn chat_body(bytes: usize) -> String {
    let sentence = "The router reads the \"model\" field, then scores each replica by queue and cache.\n ";
    let text = sentence.repeat(bytes.saturating_sub(120) / sentence.len());
    let messages = [("system", "You are terse."), ("user", text.as_str())].map(|(role, content)| serde_json::json!({"role": role, "content": content}));
    serde_json::json!({"model": MODEL, "max_tokens": 1, "messages": messages}).to_string()
}

/// µs per call of `f`: the median over `ROUNDS` of the mean over `batch` calls, after a
/// warm-up batch (V8 compiles hot code again with its optimising tier).
fn median_us(batch: usize, f: &mut dyn FnMut()) -> f64 {
    if std::env::args().any(|a| a == "--cold") {
        return cold_median_us(batch, f);
    }
    let mut rounds: Vec<f64> = (0..=ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..batch {
                f();
            }
            started.elapsed().as_secs_f64() * 1e6 / batch as f64
        })
        .skip(1)
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[rounds.len() / 2]
}

/// `--cold`: µs of one call of `f` after 4 MB were written over, as Envoy's own work
/// between two requests takes the caches over: the median of single calls (each timing
/// includes a clock read, a few hundred ns under WASI).
fn cold_median_us(batch: usize, f: &mut dyn FnMut()) -> f64 {
    let mut evict = vec![0u8; 4 << 20];
    let mut times = Vec::new();
    for n in 0..(batch * ROUNDS).max(200) {
        for line in evict.iter_mut().step_by(64) {
            *line = line.wrapping_add(n as u8);
        }
        black_box(&evict);
        let started = Instant::now();
        f();
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
