use crate::scheduler::{less_is_better, Candidate, Scorer, SchedulingRequest};

/// Shorter waiting queue scores higher: (max − q) / (max − min) over the candidates, where
/// q counts the requests this proxy sent since the last scrape.
pub struct QueueScorer;

impl QueueScorer {
    /// The type name configurations use.
    pub const TYPE: &'static str = "queue-scorer";
}

impl Scorer for QueueScorer {
    fn name(&self) -> &'static str {
        Self::TYPE
    }
    fn score(&mut self, _: &SchedulingRequest, candidates: &[Candidate], scores: &mut [f64]) {
        less_is_better(candidates.iter().map(|c| f64::from(c.queue())), scores);
    }
}
