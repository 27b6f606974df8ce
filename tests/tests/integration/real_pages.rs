//! The parser and the engine readers on every real `/metrics` page captured from model
//! servers (tests/fixtures/metrics), natively; `host_sim.rs` also feeds them to the
//! module's scraper running as wasm.

use std::path::PathBuf;

use epp::engine::{self, Engine, Reading};

fn fixtures() -> PathBuf {
    epp_tests::paths::repo_root().join("tests/fixtures/metrics")
}

fn page(name: &str) -> String {
    let path = fixtures().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read(engine: Engine, name: &str) -> Reading {
    let r = engine::read(engine, &page(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(r.bad_lines, 0, "{name}");
    r
}

#[test]
fn every_captured_page_parses_without_a_bad_line() {
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures()).expect("tests/fixtures/metrics") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("utf-8 page");
        let mut samples = 0;
        for item in epp::prom::parse(&text) {
            match item {
                Ok(s) => {
                    samples += 1;
                    assert!(!s.name.is_empty());
                    let _ = s.labels().count();
                }
                Err(e) => panic!("{}: line {}: {}", path.display(), e.line, e.reason),
            }
        }
        assert!(samples > 0, "{}", path.display());
        seen += 1;
    }
    assert_eq!(seen, 12, "all twelve captured pages");
}

#[test]
fn vllm_v1_pages() {
    let r = read(Engine::Vllm, "vllm-v1-qwen3-4b-instruct-fp8.txt");
    let m = &r.metrics;
    assert_eq!((m.waiting, m.running), (0, 0));
    assert!((m.kv_usage - 0.001_176_470_6).abs() < 1e-6, "{}", m.kv_usage);
    assert_eq!((m.block_size, m.num_blocks), (16, 850));
    assert_eq!(r.models, vec!["Qwen/Qwen3-4B-Instruct-2507-FP8"]);
    assert_eq!(m.max_lora, 0, "LoRA was off");

    let r = read(Engine::Vllm, "vllm-v1-qwen1.5-0.5b-chat-idle.txt");
    assert_eq!((r.metrics.kv_usage, r.metrics.num_blocks), (0.0, 2452));
    assert_eq!(r.models, vec!["Qwen/Qwen1.5-0.5B-Chat"]);
}

#[test]
fn vllm_v0_pages() {
    let r = read(Engine::Vllm, "vllm-v0-mymodelname-vllm-composer-test.txt");
    let m = &r.metrics;
    assert_eq!((m.waiting, m.running, m.kv_usage), (2, 3, 0.0));
    assert_eq!((m.block_size, m.num_blocks, m.max_lora), (16, 11560, 0));
    assert_eq!(r.models, vec!["mymodelname"]);

    // An excerpt cut mid-histogram is still a usable page.
    let r = read(Engine::Vllm, "vllm-v0-qwen2.5-coder-1.5b-aibrix-docs-excerpt.txt");
    assert_eq!((r.metrics.num_blocks, r.models.len()), (81767, 1));
}

#[test]
fn llm_d_inference_sim_page() {
    let r = read(Engine::Vllm, "llm-d-inference-sim-ssup2-blog-istio-gie.txt");
    let m = &r.metrics;
    assert_eq!((m.max_lora, m.block_size, m.num_blocks), (2, 16, 1024));
    assert!(m.running_adapters.is_empty() && m.waiting_adapters.is_empty());
    assert_eq!(r.models, vec!["meta-llama/Llama-3.1-8B-Instruct"]);
}

#[test]
fn sglang_pages_current_and_legacy() {
    let r = read(Engine::Sglang, "sglang-llama3.1-8b-loaded-docs-2025-03.txt");
    assert_eq!((r.metrics.waiting, r.metrics.running), (2826, 162));
    assert!((r.metrics.kv_usage - 0.28).abs() < 1e-6);
    assert_eq!(r.models, vec!["meta-llama/Llama-3.1-8B-Instruct"]);

    let r = read(Engine::Sglang, "sglang-llama3.1-8b-single-request-docs-2024-12.txt");
    assert_eq!((r.metrics.waiting, r.metrics.running, r.metrics.kv_usage), (0, 0, 0.0));

    let r = read(Engine::Sglang, "sglang-legacy-gemma2-9b-docs-2024-11.txt");
    assert!((r.metrics.kv_usage - 0.01).abs() < 1e-6);
    assert_eq!(r.models, vec!["google/gemma-2-9b-it"], "the legacy `name` label");
}

#[test]
fn triton_trtllm_pages() {
    let r = read(Engine::TritonTrtllm, "triton-trtllm-readme-2025-waiting-fraction.txt");
    let m = &r.metrics;
    assert_eq!((m.waiting, m.running), (1, 1));
    assert!((m.kv_usage - 0.4875).abs() < 1e-6);
    assert_eq!((m.block_size, m.num_blocks), (64, 6239));
    assert!(r.models.is_empty(), "Triton's `model` label is the backend, not the served model");

    // The 2023 page has no `fraction`: used / max says it.
    let r = read(Engine::TritonTrtllm, "triton-trtllm-readme-2023-inflight-batcher.txt");
    assert!((r.metrics.kv_usage - 1.0 / 6239.0).abs() < 1e-6, "{}", r.metrics.kv_usage);
    assert_eq!((r.metrics.waiting, r.metrics.running), (0, 1));
}

#[test]
fn trtllm_serve_excerpts_parse_but_carry_no_load_signals() {
    for name in ["trtllm-serve-aibrix-issue-2004-excerpt.txt", "trtllm-serve-trtllm-pr-5785-excerpt.txt"] {
        assert!(epp::prom::parse(&page(name)).all(|r| r.is_ok()), "{name}");
        let e = engine::read(Engine::TrtllmServe, &page(name)).unwrap_err();
        assert!(e.contains("no trtllm-serve load metrics"), "{name}: {e}");
    }
    // The series GIE reads for trtllm-serve, as that server names them.
    let page = "trtllm_num_requests_waiting{model_name=\"qwen\"} 4\ntrtllm_num_requests_running{model_name=\"qwen\"} 2\ntrtllm_kv_cache_utilization{model_name=\"qwen\"} 0.5\n";
    let r = engine::read(Engine::TrtllmServe, page).unwrap();
    assert_eq!((r.metrics.waiting, r.metrics.running, r.metrics.kv_usage), (4, 2, 0.5));
}

#[test]
fn a_page_read_as_the_wrong_engine_is_refused() {
    assert!(engine::read(Engine::Sglang, &page("vllm-v1-qwen3-4b-instruct-fp8.txt")).is_err());
    assert!(engine::read(Engine::Vllm, &page("sglang-llama3.1-8b-loaded-docs-2025-03.txt")).is_err());
}

#[test]
fn the_simulators_page_reads_like_vllm_v1() {
    let mut e = model_sim::Engine::new(model_sim::ServerParams {
        adapters: vec!["sql-lora".into()],
        max_num_seqs: 1,
        ..Default::default()
    });
    for id in 0..3 {
        e.submit(model_sim::Request { id, prompt_tokens: 64, max_tokens: 8, adapter: Some("sql-lora".into()), ..Default::default() }, 0);
    }
    e.step(0);
    let page = model_sim::metrics::render(&e, 1.7e9);
    let r = engine::read(Engine::Vllm, &page).unwrap();
    assert_eq!(r.bad_lines, 0);
    assert_eq!((r.metrics.waiting, r.metrics.running), (2, 1));
    assert_eq!(r.metrics.running_adapters, vec!["sql-lora"]);
    assert_eq!(r.metrics.waiting_adapters, vec!["sql-lora"]);
    assert!(r.metrics.kv_usage > 0.0);
}
