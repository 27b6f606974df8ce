use crate::scheduler::{less_is_better, Candidate, Scorer, SchedulingRequest};

/// Fewer running requests scores higher: (max − r) / (max − min) over the candidates, where
/// r counts the requests this proxy sent since the last scrape.
pub struct RunningRequestsScorer;

impl Scorer for RunningRequestsScorer {
    fn name(&self) -> &'static str {
        "running-requests-scorer"
    }
    fn score(&mut self, _: &SchedulingRequest, candidates: &[Candidate], out: &mut Vec<f64>) {
        less_is_better(candidates.iter().map(|c| f64::from(c.running())), out);
    }
}
