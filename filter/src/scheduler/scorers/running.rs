use crate::scheduler::{less_is_better, Candidate, Scorer, SchedulingRequest};

/// Fewer running requests scores higher: (max − r) / (max − min) over the candidates, where
/// r counts the requests this proxy sent since the last scrape. An endpoint with requests
/// waiting scores 0: its batch is full, however few it runs. A server with a small batch
/// (an older GPU, say) runs few requests and would otherwise look the emptiest, and draw
/// requests into its queue.
pub struct RunningRequestsScorer;

impl RunningRequestsScorer {
    /// The type name configurations use.
    pub const TYPE: &'static str = "running-requests-scorer";
}

impl Scorer for RunningRequestsScorer {
    fn name(&self) -> &'static str {
        Self::TYPE
    }
    fn score(&mut self, _: &SchedulingRequest, candidates: &[Candidate], scores: &mut [f64]) {
        less_is_better(candidates.iter().map(|c| f64::from(c.running())), scores);
        for (score, c) in scores.iter_mut().zip(candidates) {
            if c.metrics.waiting > 0 {
                *score = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::*;
    use crate::test;

    #[test]
    fn fewer_running_scores_higher_unless_requests_wait() {
        let eps = [
            endpoint("big:1", load(0, 12, 0.3)),
            endpoint("idle:1", load(0, 0, 0.0)),
            endpoint("small-and-full:1", load(3, 4, 0.9)),
        ];
        let out = scored(&mut RunningRequestsScorer, &SchedulingRequest::default(), &candidates(&eps));
        assert_eq!(out[1], 1.0, "{out:?}");
        assert!((out[0] - 0.0).abs() < 1e-9, "the most running: {out:?}");
        assert_eq!(out[2], 0.0, "four running but three waiting: full, {out:?}");
    }
}
