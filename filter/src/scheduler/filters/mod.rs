//! Filters: one per file; each narrows the candidates before scoring.

mod lora_affinity;

pub use lora_affinity::LoraAffinityFilter;
