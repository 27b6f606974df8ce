//! What a simulated server is: its limits and its speed.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerParams {
    /// The base model, as `/v1/models` and the `model_name` label show it.
    pub model: String,
    /// Registered LoRA adapters (vLLM `--lora-modules`).
    pub adapters: Vec<String>,
    /// vLLM `--max-num-seqs`: sequences decoded together.
    pub max_num_seqs: usize,
    /// vLLM `--max-num-batched-tokens`: prompt tokens prefilled per step (chunked prefill).
    pub max_batched_tokens: u32,
    /// Tokens per KV block, and blocks on the GPU.
    pub block_size: u32,
    pub num_blocks: u32,
    /// vLLM `--max-loras`: distinct adapters in one batch.
    pub max_loras: usize,
    /// A decode step's fixed cost, and what each running sequence adds to it (µs).
    pub step_base_us: u64,
    pub step_per_seq_us: u64,
    /// Prefill cost per prompt token computed (µs); tokens found in the prefix cache cost nothing.
    pub prefill_per_token_us: f64,
    /// What each token of context in the batch adds to a decode step (ns): decode reads
    /// the whole KV cache of every running sequence.
    #[serde(default)]
    pub decode_per_context_token_ns: f64,
    /// Loading an adapter that is not resident (µs).
    pub lora_load_us: u64,
}

impl Default for ServerParams {
    /// A small, quick server for tests and demos: answers of tens of tokens take a
    /// fraction of a second, and a handful of concurrent requests fill it.
    fn default() -> Self {
        ServerParams {
            model: "meta-llama/Llama-3.1-8B-Instruct".into(),
            adapters: vec![],
            max_num_seqs: 8,
            max_batched_tokens: 2048,
            block_size: 16,
            num_blocks: 1024,
            max_loras: 2,
            step_base_us: 8_000,
            step_per_seq_us: 500,
            prefill_per_token_us: 20.0,
            decode_per_context_token_ns: 0.0,
            lora_load_us: 50_000,
        }
    }
}

impl ServerParams {
    /// Llama-3.1-8B-Instruct in bf16 on one H100 80GB under vLLM V1, from public figures:
    /// - decode step ≈ 6.5 ms at small batch (16 GB of weights read at ~3.35 TB/s, ~2.5 ms
    ///   of overheads), +0.15 ms per sequence (sampling and scheduling);
    /// - KV cache: 128 KiB per token (32 layers × 8 KV heads × 128 dims × 2 (K, V) × 2 bytes);
    ///   ~55 GB left after weights and activations at `gpu_memory_utilization` 0.9 gives
    ///   ~420k tokens = 26,000 blocks of 16;
    /// - reading that cache while decoding: 128 KiB / 3.35 TB/s ≈ 40 ns per token of context
    ///   per step;
    /// - prefill ≈ 25k tokens/s (16 GFLOP per token at ~40% of 989 TFLOPS): 40 µs a token;
    /// - vLLM defaults: `max_num_seqs` 256, `max_num_batched_tokens` 8192 (chunked prefill);
    /// - a LoRA adapter (rank 16) loads from host memory in ~20 ms.
    pub fn h100_llama_8b() -> Self {
        ServerParams {
            max_num_seqs: 256,
            max_batched_tokens: 8192,
            block_size: 16,
            num_blocks: 26_000,
            max_loras: 4,
            step_base_us: 6_500,
            step_per_seq_us: 150,
            prefill_per_token_us: 40.0,
            decode_per_context_token_ns: 40.0,
            lora_load_us: 20_000,
            ..Default::default()
        }
    }
}
