use crate::scheduler::{Candidate, Scorer, SchedulingRequest};

/// Free KV cache scores higher: 1 − utilization.
pub struct KvCacheScorer;

impl KvCacheScorer {
    /// The type name configurations use.
    pub const TYPE: &'static str = "kv-cache-utilization-scorer";
}

impl Scorer for KvCacheScorer {
    fn name(&self) -> &'static str {
        Self::TYPE
    }
    fn score(&mut self, _: &SchedulingRequest, candidates: &[Candidate], scores: &mut [f64]) {
        for (s, c) in scores.iter_mut().zip(candidates) {
            *s = 1.0 - f64::from(c.metrics.kv_usage).clamp(0.0, 1.0);
        }
    }
}
