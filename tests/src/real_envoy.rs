//! Set-ups the real-Envoy tests share: servers, an Envoy over them, load, assertions.

use std::collections::HashMap;
use std::thread;

use crate::client::chat;
use crate::{Client, Envoy, EnvoyOptions, Reply, Sim};

pub use crate::MODEL;

pub fn addrs(sims: &[&Sim]) -> Vec<String> {
    sims.iter().map(|s| s.addr.clone()).collect()
}

pub fn start(sims: &[&Sim], plugin: serde_json::Value) -> Envoy {
    let envoy = Envoy::start(&addrs(sims), EnvoyOptions { plugin, ..Default::default() });
    envoy.wait_for_table();
    envoy
}

/// Who served each of `n` sequential chat requests.
pub fn served_by(envoy: &Envoy, model: &str, n: usize) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for _ in 0..n {
        let r = envoy.post("/v1/chat/completions", &chat(model, "hello", 2));
        assert_eq!(r.status, 200, "{}", r.body);
        *count.entry(r.served_by().unwrap_or("?").to_string()).or_insert(0) += 1;
    }
    count
}

/// Keeps `n` long requests running on `sim`, sent to it directly (not through Envoy).
pub fn load_directly(sim: &Sim, model: &str, n: usize, max_tokens: u32) -> Vec<thread::JoinHandle<Reply>> {
    (0..n)
        .map(|_| {
            let url = sim.url("/v1/chat/completions");
            let body = chat(model, "a long job", max_tokens);
            thread::spawn(move || Client::default().post_json(&url, &body))
        })
        .collect()
}

pub fn assert_openai_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{}", r.body);
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
}

