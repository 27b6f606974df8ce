use crate::scheduler::{less_is_better, Scorer, SchedulingRequest};
use crate::table::EndpointState;

/// Fewer running requests scores higher: (max − r) / (max − min) over the candidates.
pub struct RunningRequestsScorer;

impl Scorer for RunningRequestsScorer {
    fn name(&self) -> &'static str {
        "running-requests-scorer"
    }
    fn score(&self, _: &SchedulingRequest, candidates: &[&EndpointState], out: &mut Vec<f64>) {
        less_is_better(candidates.iter().map(|e| f64::from(e.metrics.running)), out);
    }
}
