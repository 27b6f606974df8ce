use crate::scheduler::{less_is_better, Scorer, SchedulingRequest};
use crate::table::EndpointState;

/// Shorter waiting queue scores higher: (max − q) / (max − min) over the candidates.
pub struct QueueScorer;

impl Scorer for QueueScorer {
    fn name(&self) -> &'static str {
        "queue-scorer"
    }
    fn score(&self, _: &SchedulingRequest, candidates: &[&EndpointState], out: &mut Vec<f64>) {
        less_is_better(candidates.iter().map(|e| f64::from(e.metrics.waiting)), out);
    }
}
