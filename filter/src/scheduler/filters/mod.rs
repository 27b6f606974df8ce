//! Filters: one per file; each narrows the candidates before scoring.

mod lora_affinity;
mod saturation;

pub use lora_affinity::LoraAffinityFilter;
pub use saturation::{Saturation, SaturationFilter};
