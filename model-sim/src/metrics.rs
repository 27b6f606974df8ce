//! The `/metrics` page a vLLM V1 server would show for an engine's state: the series GIE
//! reads, with vLLM's names, labels and histogram layout.

use std::fmt::Write;

use crate::engine::{Engine, Histogram};

pub fn render(engine: &Engine, now_unix_s: f64) -> String {
    let p = &engine.params;
    let model = escape(&p.model);
    let labels = format!("engine=\"0\",model_name=\"{model}\"");
    let mut out = String::with_capacity(4096);
    let mut gauge = |name: &str, help: &str, labels: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value:?}");
    };
    gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        &labels,
        engine.num_running() as f64,
    );
    gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", &labels, engine.num_waiting() as f64);
    gauge(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        &labels,
        engine.kv_usage(),
    );
    let cache = format!(
        "block_size=\"{}\",engine=\"0\",num_gpu_blocks=\"{}\",enable_prefix_caching=\"True\"",
        p.block_size, p.num_blocks
    );
    gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", &cache, 1.0);
    if !p.adapters.is_empty() {
        let (running, waiting) = engine.adapters();
        let lora = format!(
            "max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"",
            p.max_loras,
            escape(&running.join(",")),
            escape(&waiting.join(","))
        );
        gauge("vllm:lora_requests_info", "Running stats on lora requests.", &lora, now_unix_s);
    }
    let s = &engine.stats;
    for (name, help, value) in [
        ("vllm:prompt_tokens_total", "Number of prefill tokens processed.", s.prompt_tokens),
        ("vllm:generation_tokens_total", "Number of generation tokens processed.", s.generation_tokens),
        ("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.", s.preemptions),
        ("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.", s.prefix_queries),
        ("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.", s.prefix_hits),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{labels}}} {:?}", value as f64);
    }
    let _ = writeln!(
        out,
        "# HELP vllm:request_success_total Count of successfully processed requests.\n# TYPE vllm:request_success_total counter\nvllm:request_success_total{{engine=\"0\",finished_reason=\"length\",model_name=\"{model}\"}} {:?}",
        s.finished as f64
    );
    histogram(&mut out, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", &labels, &s.ttft_s);
    histogram(&mut out, "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", &labels, &s.e2e_s);
    out
}

fn histogram(out: &mut String, name: &str, help: &str, labels: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (b, c) in h.bounds.iter().zip(&h.counts) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b:?}\"}} {:?}", *c as f64);
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {:?}", h.count as f64);
    let _ = writeln!(out, "{name}_count{{{labels}}} {:?}", h.count as f64);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {:?}", h.sum);
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
