//! `fleet-bench`: routing quality in virtual time. Every workload's arrivals go through
//! every policy on the same simulated fleet; module policies run the real `dist/epp.wasm`
//! as 4 workers × 2 proxies. Prints a table per workload, writes `bench/results.json`
//! and a plot of TTFT against offered load per workload.

use std::path::PathBuf;
use std::sync::Mutex;

use clap::Parser;
use host_sim::bench::{report, sweep, Balancer, Policy, Workload};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(about = "Compare routing policies on simulated vLLM fleets in virtual time (the module makes its decisions for real)")]
struct Args {
    #[arg(long, default_value = "dist/epp.wasm")]
    wasm: PathBuf,
    /// Workloads, comma-separated: shared-prefix, sharegpt, multi-lora, overload,
    /// multi-turn, multi-turn-mixed.
    #[arg(long, value_delimiter = ',', default_value = "shared-prefix,sharegpt,multi-lora,overload,multi-turn,multi-turn-mixed")]
    workloads: Vec<String>,
    /// Policies, comma-separated: round-robin, random, least-request, default, gie-default,
    /// gie-epp, oracle.
    #[arg(long, value_delimiter = ',', default_value = "round-robin,random,least-request,default,gie-default,gie-epp,oracle")]
    policies: Vec<String>,
    /// An extra module policy: NAME=SCHEDULER, the scheduler a preset name or a JSON
    /// EndpointPickerConfig (inline, or @file.json). Repeatable.
    #[arg(long)]
    scheduler: Vec<String>,
    /// Envoy replicas and workers per replica for the module policies.
    #[arg(long, default_value_t = 2)]
    proxies: usize,
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Replicas that do not share prefix assignments (no `peers` in their configuration).
    #[arg(long)]
    no_peers: bool,
    /// Replicas that share the scraping (`share_scrapes`; off by default, as in the module).
    #[arg(long)]
    share_scrapes: bool,
    /// How requests reach the proxies and their workers: `turns` (strictly in turn) or
    /// `random` (as an L4 balancer spreads many clients).
    #[arg(long, default_value = "turns")]
    balancer: Balancer,
    /// Offered loads (requests/s) instead of each workload's own; the first is the table's.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// One rate per workload and shorter runs: under a minute.
    #[arg(long)]
    quick: bool,
    /// The ShareGPT file (`./build.sh bench` installs it).
    #[arg(long, default_value = ".tools/sharegpt/ShareGPT_V3_unfiltered_cleaned_split.json")]
    sharegpt: PathBuf,
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
    /// Where the plots go (one SVG per workload).
    #[arg(long, default_value = "bench")]
    plots: PathBuf,
    /// Runs at once.
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(2, |n| n.get()))]
    jobs: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("fleet-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut policies: Vec<Policy> = args
        .policies
        .iter()
        .map(|p| Policy::by_name(p).ok_or(format!("unknown policy {p:?}; policies: {}", Policy::names().join(", "))))
        .collect::<Result<_, _>>()?;
    for spec in &args.scheduler {
        let (name, value) = spec.split_once('=').ok_or(format!("--scheduler {spec}: expected NAME=SCHEDULER"))?;
        let text = match value.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
            None => value.to_string(),
        };
        let scheduler = serde_json::from_str(&text).unwrap_or(Value::String(text));
        policies.push(Policy::module(name, scheduler));
    }
    for p in &mut policies {
        // gie-epp keeps its own topology: one picker for every proxy.
        if let Policy::Module { name, proxies, workers, peers, share_scrapes, .. } = p {
            if name == "gie-epp" {
                continue;
            }
            (*proxies, *workers) = (args.proxies.max(1), args.workers.max(1));
            *peers = !args.no_peers;
            *share_scrapes = args.share_scrapes;
        }
    }
    let workloads: Vec<Workload> = args
        .workloads
        .iter()
        .map(|w| Workload::by_name(w, Some(&args.sharegpt), args.quick))
        .collect::<Result<_, _>>()?;
    let mut workloads = workloads;
    if let Some(&first) = args.rates.first() {
        for w in &mut workloads {
            w.rates = args.rates.clone();
            w.main_rate = first;
        }
    }

    // (workload, policy) sweeps, spread over `jobs` threads.
    let jobs: Vec<(usize, usize)> = (0..workloads.len()).flat_map(|w| (0..policies.len()).map(move |p| (w, p))).collect();
    let queue = Mutex::new(jobs.clone());
    let done = Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.jobs.max(1) {
            s.spawn(|| loop {
                let Some((w, p)) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else { return };
                let result = sweep(&args.wasm, &workloads[w], &policies[p], args.seed, args.balancer);
                if let Ok(runs) = &result {
                    for r in runs {
                        if let Some(trap) = r.traps.first() {
                            eprintln!("TRAP in {} / {}: {trap}", workloads[w].name, r.policy);
                        }
                    }
                }
                eprintln!("  {} / {} done ({:.0} s)", workloads[w].name, policies[p].name(), started.elapsed().as_secs_f64());
                done.lock().unwrap_or_else(|e| e.into_inner()).push(((w, p), result));
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(k, _)| *k);

    let (mut mains, mut sweeps) = (Vec::new(), Vec::new());
    for (w, workload) in workloads.iter().enumerate() {
        let (mut rows, mut lines) = (Vec::new(), Vec::new());
        for ((_, p), result) in done.iter().filter(|((dw, _), _)| *dw == w) {
            let runs = result.as_ref().map_err(|e| format!("{} / {}: {e}", workload.name, policies[*p].name()))?;
            let summaries: Vec<Value> = runs.iter().map(report::summary).collect();
            if let Some(main) = runs.iter().position(|r| r.rate == workload.main_rate) {
                rows.push((policies[*p].name().to_string(), summaries[main].clone()));
            }
            lines.push((policies[*p].name().to_string(), summaries));
        }
        report::print_table(workload.name, workload.main_rate, &rows);
        if !args.quick {
            let path = args.plots.join(format!("ttft-{}.svg", workload.name));
            report::plot(&path, workload.name, &lines)?;
        }
        mains.push((workload.name.to_string(), rows));
        sweeps.push((workload.name.to_string(), lines));
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let json = report::results_json(&mains, &sweeps);
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, text + "\n").map_err(|e| format!("{}: {e}", args.out.display()))?;
    println!("\nwrote {} ({:.0} s)", args.out.display(), started.elapsed().as_secs_f64());
    Ok(())
}
