use crate::scheduler::{less_is_better, Candidate, Scorer, SchedulingRequest};

/// Shorter waiting queue scores higher: (max − q) / (max − min) over the candidates, where
/// q counts the requests this proxy sent since the last scrape.
pub struct QueueScorer;

impl Scorer for QueueScorer {
    fn name(&self) -> &'static str {
        "queue-scorer"
    }
    fn score(&mut self, _: &SchedulingRequest, candidates: &[Candidate], out: &mut Vec<f64>) {
        less_is_better(candidates.iter().map(|c| f64::from(c.queue())), out);
    }
}
