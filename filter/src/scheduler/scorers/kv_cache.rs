use crate::scheduler::{Scorer, SchedulingRequest};
use crate::table::EndpointState;

/// Free KV cache scores higher: 1 − utilization.
pub struct KvCacheScorer;

impl Scorer for KvCacheScorer {
    fn name(&self) -> &'static str {
        "kv-cache-utilization-scorer"
    }
    fn score(&self, _: &SchedulingRequest, candidates: &[&EndpointState], out: &mut Vec<f64>) {
        out.extend(candidates.iter().map(|e| 1.0 - f64::from(e.metrics.kv_usage).clamp(0.0, 1.0)));
    }
}
