//! The Model Server Protocol: which series of each engine's `/metrics` page carry the
//! signals the scheduler uses (GIE's names, plus the older names still in the field).

use serde::{Deserialize, Serialize};

use crate::prom;
use crate::table::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    #[default]
    Vllm,
    Sglang,
    TrtllmServe,
    TritonTrtllm,
}

/// What a series tells the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Waiting,
    Running,
    /// KV-cache usage, a fraction.
    KvUsage,
    /// The same under a deprecated name: read only when no current series is there.
    KvUsageDeprecated,
    /// vLLM's `cache_config_info`: `block_size` and `num_gpu_blocks` labels.
    CacheConfig,
    /// vLLM's `lora_requests_info`: `max_lora` and the running and waiting adapters.
    LoraInfo,
    /// vLLM's `lora_adapter_loaded{adapter_name}`.
    LoraLoaded,
    /// Triton's request counts by `request_type` (waiting, scheduled).
    RequestsByType,
    /// Triton's KV-cache blocks by `kv_cache_block_type` (fraction, used, max, tokens_per).
    KvBlocks,
}

/// An engine's metric names, as data (GIE's mapping registry has the same shape): adding
/// an engine is adding a table.
struct Spec {
    name: &'static str,
    series: &'static [(&'static str, Signal)],
    /// Its load series carry the served model in `model_name` (or `name`).
    models_in_labels: bool,
}

const VLLM: Spec = Spec {
    name: "vllm",
    series: &[
        ("vllm:num_requests_waiting", Signal::Waiting),
        ("vllm:num_requests_running", Signal::Running),
        ("vllm:kv_cache_usage_perc", Signal::KvUsage),
        // vLLM V1 still exports it beside kv_cache_usage_perc: one of them counts.
        ("vllm:gpu_cache_usage_perc", Signal::KvUsageDeprecated),
        ("vllm:cache_config_info", Signal::CacheConfig),
        ("vllm:lora_requests_info", Signal::LoraInfo),
        ("vllm:lora_adapter_loaded", Signal::LoraLoaded),
    ],
    models_in_labels: true,
};

const SGLANG: Spec = Spec {
    name: "sglang",
    series: &[
        ("sglang:num_queue_reqs", Signal::Waiting),
        ("sglang:num_requests_waiting", Signal::Waiting),
        ("sglang:num_running_reqs", Signal::Running),
        ("sglang:num_requests_running", Signal::Running),
        ("sglang:token_usage", Signal::KvUsage),
    ],
    models_in_labels: true,
};

const TRTLLM_SERVE: Spec = Spec {
    name: "trtllm-serve",
    series: &[
        ("trtllm_num_requests_waiting", Signal::Waiting),
        ("trtllm_num_requests_running", Signal::Running),
        ("trtllm_kv_cache_utilization", Signal::KvUsage),
    ],
    models_in_labels: true,
};

const TRITON_TRTLLM: Spec = Spec {
    name: "triton-trtllm",
    series: &[
        ("nv_trt_llm_request_metrics", Signal::RequestsByType),
        ("nv_trt_llm_kv_cache_block_metrics", Signal::KvBlocks),
    ],
    models_in_labels: false,
};

impl Engine {
    fn spec(self) -> &'static Spec {
        match self {
            Engine::Vllm => &VLLM,
            Engine::Sglang => &SGLANG,
            Engine::TrtllmServe => &TRTLLM_SERVE,
            Engine::TritonTrtllm => &TRITON_TRTLLM,
        }
    }

    fn signal(self, series: &str) -> Option<Signal> {
        self.spec().series.iter().find(|(name, _)| *name == series).map(|&(_, signal)| signal)
    }
}

/// What one `/metrics` page says about its server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub metrics: Metrics,
    /// Served model names seen in the labels (vLLM's and SGLang's `model_name`).
    pub models: Vec<String>,
    /// Lines that did not parse; the page was still used.
    pub bad_lines: usize,
    /// Model and adapter names past `MAX_NAMES`, left out.
    pub names_left_out: usize,
}

/// At most this many model names (and as many adapter names per list) are kept from one
/// page: a page is outside data, and each name costs memory in every VM and time in every
/// decision. A real server serves a few models and a few dozen adapters.
pub const MAX_NAMES: usize = 256;

/// Sums and flags while walking a page; a signal counts only once a series for it is seen.
#[derive(Default)]
struct Acc {
    waiting: Option<f64>,
    running: Option<f64>,
    kv_sum: f64,
    kv_series: u32,
    kv_used: Option<f64>,
    kv_max: Option<f64>,
    lora_stamp: f64,
    saw_lora_info: bool,
}

impl Acc {
    fn add(slot: &mut Option<f64>, v: f64) {
        // A negative gauge is a server bug; it still shows the series is there.
        if !v.is_nan() {
            *slot = Some(slot.unwrap_or(0.0) + v.max(0.0));
        }
    }
    fn kv(&mut self, v: f64) {
        if v.is_finite() {
            self.kv_sum += v.clamp(0.0, 1.0);
            self.kv_series += 1;
        }
    }
}

/// Reads the load signals of `engine` from a page. A page without any of them (an HTML
/// error page, another exporter, garbage) is an error: the endpoint is not a model server
/// we can judge, and the reason says so.
pub fn read(engine: Engine, page: &str) -> Result<Reading, String> {
    let mut acc = Acc::default();
    let mut out = Reading::default();
    let mut samples = 0usize;
    // A deprecated KV-cache series counts only where no current one is there.
    let mut deprecated_kv = (0.0f64, 0u32);
    let spec = engine.spec();
    for item in prom::parse_only(page, |name| reads(engine, name)) {
        let s = match item {
            Ok(s) => s,
            Err(_) => {
                out.bad_lines += 1;
                continue;
            }
        };
        samples += 1;
        match engine.signal(s.name) {
            Some(Signal::Waiting) => Acc::add(&mut acc.waiting, s.value),
            Some(Signal::Running) => Acc::add(&mut acc.running, s.value),
            Some(Signal::KvUsage) => acc.kv(s.value),
            Some(Signal::KvUsageDeprecated) if s.value.is_finite() => {
                deprecated_kv = (deprecated_kv.0 + s.value.clamp(0.0, 1.0), deprecated_kv.1 + 1)
            }
            Some(Signal::KvUsageDeprecated) | None => {}
            Some(Signal::CacheConfig) => read_cache_config(&s, &mut out.metrics),
            Some(Signal::LoraInfo) => {
                // vLLM keeps one series per adapter set it has seen; the value is the time it
                // was last current (V0 sometimes writes 1.0), so the largest value wins.
                if !acc.saw_lora_info || s.value >= acc.lora_stamp {
                    acc.saw_lora_info = true;
                    acc.lora_stamp = s.value;
                    let m = &mut out.metrics;
                    m.max_lora = s.label("max_lora").and_then(|v| v.parse().ok()).unwrap_or(0);
                    m.running_adapters = split_list(s.label("running_lora_adapters").as_deref());
                    m.waiting_adapters = split_list(s.label("waiting_lora_adapters").as_deref());
                }
            }
            Some(Signal::LoraLoaded) => {
                if let (Some(name), true) = (s.label("adapter_name"), s.value > 0.0) {
                    push_unique(&mut out.metrics.loaded_adapters, &name);
                }
            }
            Some(Signal::RequestsByType) => match s.label("request_type").as_deref() {
                Some("waiting") => Acc::add(&mut acc.waiting, s.value),
                Some("scheduled") => Acc::add(&mut acc.running, s.value),
                _ => {}
            },
            Some(Signal::KvBlocks) => {
                let v = s.value;
                match s.label("kv_cache_block_type").as_deref() {
                    Some("fraction") => acc.kv(v),
                    Some("used") => Acc::add(&mut acc.kv_used, v),
                    Some("max") => {
                        Acc::add(&mut acc.kv_max, v);
                        out.metrics.num_blocks = to_u32(v);
                    }
                    Some("tokens_per") => out.metrics.block_size = to_u32(v),
                    _ => {}
                }
            }
        }
        if spec.models_in_labels && is_load_series(s.name) {
            let model = s.label("model_name").or_else(|| s.label("name"));
            if let Some(model) = model.filter(|m| !m.is_empty() && m != "undefined") {
                if !push_unique(&mut out.models, &model) {
                    out.names_left_out += 1;
                }
            }
        }
    }
    if acc.kv_series == 0 && deprecated_kv.1 > 0 {
        (acc.kv_sum, acc.kv_series) = deprecated_kv;
    }
    // Older Triton pages have no `fraction`; used/max says the same.
    if acc.kv_series == 0 {
        if let (Some(used), Some(max)) = (acc.kv_used, acc.kv_max) {
            if max > 0.0 {
                acc.kv(used / max);
            }
        }
    }
    if acc.waiting.is_none() && acc.running.is_none() && acc.kv_series == 0 {
        return Err(format!(
            "no {} load metrics on the page ({samples} samples, {} unparsable lines)",
            engine_name(engine),
            out.bad_lines
        ));
    }
    let m = &mut out.metrics;
    m.waiting = to_u32(acc.waiting.unwrap_or(0.0));
    m.running = to_u32(acc.running.unwrap_or(0.0));
    if acc.kv_series > 0 {
        m.kv_usage = (acc.kv_sum / f64::from(acc.kv_series)) as f32;
    }
    Ok(out)
}

pub fn engine_name(engine: Engine) -> &'static str {
    engine.spec().name
}

/// The series `read` looks at for `engine`; the parser skips the others unread.
fn reads(engine: Engine, name: &str) -> bool {
    is_load_series(name) || engine.signal(name).is_some()
}

fn is_load_series(name: &str) -> bool {
    name.ends_with("num_requests_waiting")
        || name.ends_with("num_requests_running")
        || name.ends_with("num_queue_reqs")
        || name.ends_with("num_running_reqs")
}

fn read_cache_config(s: &prom::Sample<'_>, m: &mut Metrics) {
    let num = |label: &str| {
        s.label(label)
            .and_then(|v| v.parse::<f64>().ok())
            .map(to_u32)
            .unwrap_or(0)
    };
    if m.block_size == 0 {
        m.block_size = num("block_size");
    }
    // Data-parallel vLLM writes one series per engine; their blocks add up.
    m.num_blocks = m.num_blocks.saturating_add(num("num_gpu_blocks"));
}

fn split_list(list: Option<&str>) -> Vec<String> {
    list.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .take(MAX_NAMES)
        .map(String::from)
        .collect()
}

/// Adds `item` once; false if the list is full and it was new. The list never passes
/// `MAX_NAMES`, so the check stays cheap however many samples repeat a name.
fn push_unique(list: &mut Vec<String>, item: &str) -> bool {
    if list.iter().any(|x| x == item) {
        return true;
    }
    if list.len() >= MAX_NAMES {
        return false;
    }
    list.push(item.to_string());
    true
}

fn to_u32(v: f64) -> u32 {
    // `as` saturates and maps NaN to 0, which is what a gauge read should do.
    v as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn vllm_signals_and_lora_pick_the_newest_series() {
        let page = r#"
vllm:num_requests_waiting{engine="0",model_name="llama"} 3
vllm:num_requests_waiting{engine="1",model_name="llama"} 2
vllm:num_requests_running{engine="0",model_name="llama"} 7.0
vllm:gpu_cache_usage_perc{model_name="llama"} 0.9
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.75
vllm:cache_config_info{block_size="16",num_gpu_blocks="100",engine="0"} 1
vllm:cache_config_info{block_size="16",num_gpu_blocks="100",engine="1"} 1
vllm:lora_requests_info{max_lora="4",running_lora_adapters="a, b",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="c",waiting_lora_adapters="d"} 1.8e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="e",waiting_lora_adapters=""} 1.6e9
vllm:lora_adapter_loaded{adapter_name="c"} 1
vllm:lora_adapter_loaded{adapter_name="z"} 0
"#;
        let r = read(Engine::Vllm, page).unwrap();
        let m = &r.metrics;
        assert_eq!((m.waiting, m.running), (5, 7));
        assert_eq!(m.kv_usage, 0.5, "the current name wins over the deprecated one");
        assert_eq!((m.block_size, m.num_blocks), (16, 200));
        assert_eq!(m.max_lora, 4);
        assert_eq!(m.running_adapters, vec!["c"]);
        assert_eq!(m.waiting_adapters, vec!["d"]);
        assert_eq!(m.loaded_adapters, vec!["c"]);
        assert_eq!(r.models, vec!["llama"]);
    }

    #[test]
    fn garbage_is_an_error_that_says_why() {
        for page in ["", "<html><body>502 Bad Gateway</body></html>", "\0\0\u{1}", "up 1\n"] {
            let e = read(Engine::Vllm, page).unwrap_err();
            assert!(e.contains("no vllm load metrics"), "{e}");
        }
        // A page of the wrong engine is not read as this one.
        let e = read(Engine::Sglang, "vllm:num_requests_waiting 1").unwrap_err();
        assert!(e.contains("sglang"), "{e}");
    }

    #[test]
    fn hostile_values_are_clamped() {
        let r = read(
            Engine::Vllm,
            "vllm:num_requests_waiting NaN\nvllm:num_requests_running 1e30\nvllm:kv_cache_usage_perc 7\n",
        )
        .unwrap();
        assert_eq!(r.metrics.waiting, 0);
        assert_eq!(r.metrics.running, u32::MAX);
        assert_eq!(r.metrics.kv_usage, 1.0);
        let r = read(Engine::Vllm, "vllm:num_requests_waiting -4\nvllm:kv_cache_usage_perc -Inf").unwrap();
        assert_eq!((r.metrics.waiting, r.metrics.kv_usage), (0, 0.0));
    }

    #[test]
    fn a_page_with_ten_thousand_models_is_read_in_linear_time_and_bounded() {
        let mut page = String::from("vllm:kv_cache_usage_perc 0.5\n");
        for i in 0..10_000 {
            page.push_str(&format!("vllm:num_requests_waiting{{model_name=\"m{i}\"}} 1\n"));
        }
        let r = read(Engine::Vllm, &page).unwrap();
        assert_eq!(r.models.len(), MAX_NAMES);
        assert_eq!(r.names_left_out, 10_000 - MAX_NAMES);
        assert_eq!(r.metrics.waiting, 10_000, "the load still counts every series");
    }
}
