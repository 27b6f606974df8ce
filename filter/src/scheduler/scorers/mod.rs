//! Scorers: one per file, each a score in [0, 1] per candidate.

mod kv_cache;
mod lora_affinity;
pub mod prefix_cache;
mod queue;
mod running;

pub use kv_cache::KvCacheScorer;
pub use lora_affinity::LoraAffinityScorer;
pub use prefix_cache::PrefixCacheScorer;
pub use queue::QueueScorer;
pub use running::RunningRequestsScorer;
