use crate::scheduler::{Candidate, Scorer, SchedulingRequest};

/// Free KV cache scores higher: 1 − utilization.
pub struct KvCacheScorer;

impl Scorer for KvCacheScorer {
    fn name(&self) -> &'static str {
        "kv-cache-utilization-scorer"
    }
    fn score(&mut self, _: &SchedulingRequest, candidates: &[Candidate], out: &mut Vec<f64>) {
        out.extend(candidates.iter().map(|c| 1.0 - f64::from(c.metrics.kv_usage).clamp(0.0, 1.0)));
    }
}
