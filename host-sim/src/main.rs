//! `host-sim`: run the real module against a simulated fleet, in virtual time, and print
//! every decision with each endpoint's scores and the wasm instructions it cost.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use host_sim::{Fault, Fleet, HttpRequest, ProxyConfig, SimServer, World};
use model_sim::{Request, ServerParams};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    about = "Run wasm-epp (the real dist/epp.wasm) against simulated vLLM servers in virtual time",
    long_about = "Runs the module as Envoy would (a singleton scraper VM and worker picker VMs sharing \
shared data) against simulated model servers, on a virtual clock. Prints each routing decision with \
every endpoint's filter results and scores, and the wasm instructions (fuel) it cost.\n\n\
Examples:\n  host-sim --servers 4 --requests 10\n  host-sim --servers 3 --lora sql-lora --load 10.0.0.1:8000=20 --requests 10 --model sql-lora\n  \
host-sim --requests-file reqs.jsonl --config '{\"max_fallbacks\": 0}'\n  host-sim --servers 8 --requests 100000 --quiet --serve"
)]
struct Args {
    /// The module to run.
    #[arg(long, default_value = "dist/epp.wasm")]
    wasm: PathBuf,
    /// Simulated servers, at 10.0.0.1:8000, 10.0.0.2:8000, … (10.0.1.0:8000 after 10.0.0.255)
    #[arg(long, default_value_t = 4)]
    servers: usize,
    /// LoRA adapters every server has registered, comma-separated.
    #[arg(long, value_delimiter = ',')]
    lora: Vec<String>,
    /// Requests queued on a server before traffic starts (load from elsewhere): ADDR=N, repeatable.
    #[arg(long)]
    load: Vec<String>,
    /// A server's scrape fault: ADDR=timeout|refused|error|garbage|oversized, repeatable.
    #[arg(long)]
    fault: Vec<String>,
    /// Plugin configuration keys to set, as a JSON object (merged over the defaults).
    #[arg(long, default_value = "{}")]
    config: String,
    /// Envoy workers (picker VMs) per proxy, and proxies (Envoy replicas).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    #[arg(long, default_value_t = 1)]
    proxies: usize,
    /// Generated chat requests to send (ignored with --requests-file).
    #[arg(long, default_value_t = 10)]
    requests: usize,
    /// The model generated requests ask for.
    #[arg(long, default_value = "meta-llama/Llama-3.1-8B-Instruct")]
    model: String,
    /// Requests from a file, one JSON object a line: {"path": "/v1/chat/completions", "body": {...}, "headers": {"k": "v"}}.
    #[arg(long)]
    requests_file: Option<PathBuf>,
    /// Virtual time between requests, ms.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Virtual time before the first request, ms (the scraper's first rounds).
    #[arg(long, default_value_t = 200)]
    warmup_ms: u64,
    /// Send each routed request to the chosen server's engine, so load follows routing.
    #[arg(long)]
    serve: bool,
    /// Only the summary.
    #[arg(long)]
    quiet: bool,
    /// Sample where the module spends its time (wasm stacks every ~20 µs of wall time) and
    /// write them as folded stacks (one `a;b;c count` a line: flamegraph.pl, inferno or
    /// speedscope read it). Build the module unstripped to see function names.
    #[arg(long)]
    profile: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print where request N's instructions go: each callback and host call with the
    /// instructions its callback had run by then (deterministic, unlike --profile).
    #[arg(long)]
    trace_fuel: Option<usize>,
}

fn main() {
    let args = Args::parse();
    if args.profile.is_some() {
        host_sim::vm::start_profiling();
    }
    let profile = args.profile.clone();
    let r = run(args);
    if let Some(path) = profile {
        if let Err(e) = std::fs::write(&path, host_sim::vm::folded_profile()) {
            eprintln!("host-sim: could not write {}: {e}", path.display());
        }
    }
    if let Err(e) = r {
        eprintln!("host-sim: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut servers: Vec<SimServer> = (1..=args.servers)
        .map(|i| {
            let params = ServerParams { adapters: args.lora.clone(), ..Default::default() };
            SimServer::new(&format!("10.0.{}.{}:8000", i / 256, i % 256), params)
        })
        .collect();
    for spec in &args.fault {
        let (addr, kind) = split_spec(spec)?;
        let fault = match kind {
            "timeout" => Fault::Timeout,
            "refused" => Fault::Refused,
            "error" => Fault::ServerError,
            "garbage" => Fault::Garbage,
            "oversized" => Fault::Oversized,
            other => return Err(format!("--fault {spec}: unknown fault {other:?}")),
        };
        servers.iter_mut().find(|s| s.addr == addr).ok_or(format!("--fault: no server {addr}"))?.fault = fault;
    }
    let fleet = Fleet::new(servers);
    let mut config = json!({"endpoints": fleet.addresses(), "explain": !args.quiet});
    let extra: Value = serde_json::from_str(&args.config).map_err(|e| format!("--config: {e}"))?;
    if let (Some(c), Some(x)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(x.clone());
    }
    let proxy = ProxyConfig { plugin_config: config.to_string(), workers: args.workers, seed: args.seed, ..Default::default() };
    let mut world = World::new(&args.wasm, fleet, args.proxies, proxy).map_err(|e| format!("{e:#}"))?;
    for p in &world.proxies {
        if let Some(e) = p.startup_errors.first() {
            return Err(e.clone());
        }
    }
    // What the module said while starting (the notes on a GIE configuration, say), once.
    let mut said = std::collections::BTreeSet::new();
    for vm in world.proxies.iter().flat_map(|p| &p.vms) {
        for (level, message) in &vm.state().logs {
            if *level >= 3 && said.insert(message.clone()) {
                eprintln!("host-sim: module: {message}");
            }
        }
    }
    // Load from elsewhere, queued at the start of the run.
    let start = world.now_us();
    let mut next_id = 1_000_000u64;
    for spec in &args.load {
        let (addr, n) = split_spec(spec)?;
        let n: u64 = n.parse().map_err(|_| format!("--load {spec}: N is not a number"))?;
        let s = world.fleet.server(addr).ok_or(format!("--load: no server {addr}"))?;
        for _ in 0..n {
            next_id += 1;
            s.submit(Request { id: next_id, prompt_tokens: 512, max_tokens: 2000, ..Default::default() }, start);
        }
    }
    world.advance_ms(args.warmup_ms);
    let requests = match &args.requests_file {
        Some(path) => read_requests(path)?,
        None => (0..args.requests)
            .map(|i| {
                let body = json!({"model": args.model, "max_tokens": 64,
                    "messages": [{"role": "user", "content": format!("question {i}: {}", "why? ".repeat(i % 50))}]});
                HttpRequest::post_json("/v1/chat/completions", &body)
            })
            .collect(),
    };

    let (mut per_endpoint, mut statuses, mut fuel) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for (i, req) in requests.iter().enumerate() {
        let (proxy, worker) = (i % args.proxies, (i / args.proxies) % args.workers);
        if args.trace_fuel == Some(i) {
            host_sim::fuel::start_trace();
        }
        let out = world.request(proxy, worker, req);
        fuel.push(out.fuel);
        let destination = out.upstream_header("x-gateway-destination-endpoint").map(str::to_string);
        if let Some(trap) = &out.trap {
            return Err(format!("request {i}: {trap}"));
        }
        let status = match (&out.local_response, &destination) {
            (Some(r), _) => r.status,
            (None, Some(_)) => 200,
            (None, None) => 0,
        };
        *statuses.entry(status).or_insert(0) += 1;
        if let Some(d) = &destination {
            let chosen = d.split(',').next().unwrap_or_default().to_string();
            *per_endpoint.entry(chosen.clone()).or_insert(0) += 1;
            if args.serve {
                serve(&mut world, &chosen, req, i as u64);
            }
        }
        let response = world.finish(proxy, &out, 200);
        if args.trace_fuel == Some(i) {
            print_fuel_trace(i, &host_sim::fuel::take_trace());
        }
        if !args.quiet {
            let t = (world.now_ns() - 1_800_000_000_000_000_000) / 1_000_000;
            match (&out.local_response, &destination) {
                (Some(r), _) => println!("t={t}ms proxy{proxy}/worker{worker}: {} {}", r.status, String::from_utf8_lossy(&r.body)),
                (None, Some(d)) => println!("t={t}ms proxy{proxy}/worker{worker}: -> {d}  (fuel {})", out.fuel),
                (None, None) => println!("t={t}ms proxy{proxy}/worker{worker}: not forwarded (stuck: {})", out.stuck),
            }
            let explain = response.as_ref().and_then(|h| h.iter().find(|(k, _)| k == "x-wasm-epp-explain"));
            if let Some((_, text)) = explain {
                for part in text.split("; ") {
                    println!("    {part}");
                }
            }
        }
        world.advance_ms(args.interval_ms);
    }
    fuel.sort_unstable();
    println!("\n{} requests; status: {statuses:?}", requests.len());
    println!("chosen endpoint: {per_endpoint:?}");
    if !fuel.is_empty() {
        println!(
            "fuel per request (wasm instructions): p50 {}, p99 {}, max {}",
            fuel[fuel.len() / 2],
            fuel[(fuel.len() * 99 / 100).min(fuel.len() - 1)],
            fuel[fuel.len() - 1]
        );
    }
    let fail_open: i64 = world.proxies.iter().map(|p| p.metric("wasm_epp.fail_open")).sum();
    println!("fail-open decisions: {fail_open}");
    let mut by_callback: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for vm in world.proxies.iter().flat_map(|p| &p.vms) {
        for (name, (calls, fuel)) in &vm.fuel_by_callback {
            let t = by_callback.entry(name).or_default();
            *t = (t.0 + calls, t.1 + fuel);
        }
    }
    println!("fuel by callback (every VM; calls, instructions a call):");
    for (name, (calls, fuel)) in by_callback {
        println!("  {name:<32} {calls:>8} {:>10}", fuel / calls.max(1));
    }
    Ok(())
}

/// A callback's host calls with the instructions run before each, then the callback's
/// own line with its total.
fn print_fuel_trace(i: usize, trace: &[(&str, u64)]) {
    println!("request {i}, instructions by callback and host call:");
    let mut last = 0;
    for (what, fuel) in trace {
        // Callbacks are `proxy_on_*`; host calls never are.
        if what.starts_with("proxy_on_") {
            println!("  {what:<40} {fuel:>8} in all ({} after its last host call)", fuel.saturating_sub(last));
            last = 0;
        } else {
            println!("    {what:<38} {:>8} before it", fuel.saturating_sub(last));
            last = *fuel;
        }
    }
}

fn split_spec(spec: &str) -> Result<(&str, &str), String> {
    spec.split_once('=').ok_or(format!("{spec:?}: expected ADDR=VALUE"))
}

fn read_requests(path: &PathBuf) -> Result<Vec<HttpRequest>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            let v: Value = serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
            let path = v["path"].as_str().unwrap_or("/v1/chat/completions").to_string();
            let headers = v["headers"]
                .as_object()
                .map(|h| h.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                .unwrap_or_default();
            let body = match &v["body"] {
                Value::Null => Vec::new(),
                Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            let method = if body.is_empty() { "GET" } else { "POST" };
            Ok(HttpRequest { method: method.into(), path, headers, body, chunk: 0 })
        })
        .collect()
}

/// The routed request runs on the chosen server's engine.
fn serve(world: &mut World, addr: &str, req: &HttpRequest, id: u64) {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let now = world.now_us();
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if let Some(s) = world.fleet.server(addr) {
        let adapter = (model != s.engine.params.model).then_some(model);
        let max_tokens = body["max_tokens"].as_u64().unwrap_or(64) as u32;
        let prompt = model_sim::text::prompt_of(&body);
        s.submit(Request::for_prompt(id, &prompt, max_tokens, adapter, s.engine.params.block_size), now);
    }
}
