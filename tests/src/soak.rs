//! A soak: real Envoy with the module over four simulated servers, clients sending valid
//! and invalid requests for a while, one server's `/metrics` misbehaving in turn, Envoy's
//! memory sampled. What it reports is what an operator would ask of a long run: was any
//! valid request lost, did every bad one get its answer, did memory stay flat.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::chat;
use crate::real_envoy::{addrs, MODEL};
use crate::{Envoy, EnvoyOptions, Sim};

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub seconds: f64,
    pub valid_sent: u64,
    /// Valid requests that did not get a 200.
    pub valid_lost: u64,
    pub invalid_sent: u64,
    /// Invalid requests answered with anything but their 400.
    pub invalid_misanswered: u64,
    /// The metrics faults cycled through, one server at a time.
    pub faults: Vec<String>,
    /// Envoy's resident memory (MiB), sampled evenly over the run.
    pub rss_mib: Vec<u64>,
    /// Growth over the second half of the run (MiB): a leak shows here, warm-up does not.
    pub rss_growth_second_half_mib: i64,
    pub traps: usize,
}

/// A process's resident memory, in MiB.
pub fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).unwrap_or(0) >> 10
}

/// Runs the soak for `duration` with `clients` concurrent clients.
pub fn soak(duration: Duration, clients: usize) -> SoakReport {
    let sims: Vec<Sim> = (0..4).map(|_| Sim::start(&["--max-num-seqs", "64", "--step-ms", "1", "--step-per-seq-ms", "0.05", "--prefill-us-per-token", "1"])).collect();
    let refs: Vec<&Sim> = sims.iter().collect();
    let envoy = Envoy::start(&addrs(&refs), EnvoyOptions { plugin: serde_json::json!({}), ..Default::default() });
    envoy.wait_for_table();
    let stop = AtomicBool::new(false);
    let (valid_sent, valid_lost, invalid_sent, invalid_bad) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    let mut rss = vec![];
    let mut faults = vec![];
    thread::scope(|s| {
        for c in 0..clients {
            let (envoy, stop) = (&envoy, &stop);
            let (valid_sent, valid_lost, invalid_sent, invalid_bad) = (&valid_sent, &valid_lost, &invalid_sent, &invalid_bad);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    if i % 10 == 0 {
                        invalid_sent.fetch_add(1, Ordering::Relaxed);
                        let r = envoy.client().send(&envoy.url("/v1/chat/completions"), &[("content-type", "application/json")], Some(br#"{"model": "#));
                        if r.status != 400 {
                            invalid_bad.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    // Prompts of a few shared prefixes and a unique tail, a few KB each.
                    let prompt = format!("{} {c}-{i} {}", "shared context ".repeat(50 + 40 * (i % 5) as usize), "tail ".repeat((i % 97) as usize));
                    valid_sent.fetch_add(1, Ordering::Relaxed);
                    let r = envoy.post("/v1/chat/completions", &chat(MODEL, &prompt, 4));
                    if r.status != 200 {
                        valid_lost.fetch_add(1, Ordering::Relaxed);
                        eprintln!("soak: lost a valid request: {} {}", r.status, r.body);
                    }
                }
            });
        }
        // One server at a time misbehaves for a few seconds, then heals.
        let kinds = ["error", "garbage", "hang", "huge", "many-models", "huge-kv-cache"];
        let step = Duration::from_secs(3);
        let mut k = 0;
        while started.elapsed() < duration {
            let sim = &sims[k % sims.len()];
            let kind = kinds[k % kinds.len()];
            sim.set_metrics_fault(kind);
            faults.push(kind.to_string());
            thread::sleep(step.min(duration.saturating_sub(started.elapsed())));
            sim.set_metrics_fault("ok");
            rss.push(rss_mib(envoy.pid()));
            k += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    let half = rss.len() / 2;
    let growth = match (rss.get(half), rss.last()) {
        (Some(&a), Some(&b)) => b as i64 - a as i64,
        _ => 0,
    };
    let log = envoy.log();
    SoakReport {
        seconds: started.elapsed().as_secs_f64(),
        valid_sent: valid_sent.into_inner(),
        valid_lost: valid_lost.into_inner(),
        invalid_sent: invalid_sent.into_inner(),
        invalid_misanswered: invalid_bad.into_inner(),
        faults,
        rss_mib: rss,
        rss_growth_second_half_mib: growth,
        traps: log.matches("wasm trap").count() + log.matches("panicked").count(),
    }
}
