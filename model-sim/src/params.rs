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
    /// Prefill cost per prompt token computed (µs).
    pub prefill_per_token_us: f64,
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
            lora_load_us: 50_000,
        }
    }
}
