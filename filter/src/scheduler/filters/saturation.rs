use serde::Deserialize;

use crate::scheduler::{Candidate, Filter, SchedulingRequest};

/// GIE's saturation detector: an endpoint whose queue (with what was sent since the
/// scrape) reaches `queueDepthThreshold`, or whose KV cache is at least
/// `kvCacheUtilThreshold` full, is saturated. Endpoints with stale metrics never get here:
/// the router only schedules over fresh ones.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Saturation {
    #[serde(default = "default_queue")]
    pub queue_depth_threshold: u32,
    #[serde(default = "default_kv")]
    pub kv_cache_util_threshold: f64,
}

fn default_queue() -> u32 {
    5
}
fn default_kv() -> f64 {
    0.8
}

impl Default for Saturation {
    fn default() -> Self {
        Saturation { queue_depth_threshold: default_queue(), kv_cache_util_threshold: default_kv() }
    }
}

impl Saturation {
    pub fn is_saturated(&self, c: &Candidate) -> bool {
        c.queue() >= self.queue_depth_threshold || f64::from(c.metrics.kv_usage) >= self.kv_cache_util_threshold
    }
}

/// Keeps the endpoints that are not saturated; if all are, keeps all (shedding is the
/// router's call, by priority, not a filter's).
pub struct SaturationFilter(pub Saturation);

impl SaturationFilter {
    /// The type name configurations use.
    pub const TYPE: &'static str = "saturation-filter";
}

impl Filter for SaturationFilter {
    fn name(&self) -> &'static str {
        Self::TYPE
    }
    fn keep(&self, _: &SchedulingRequest, candidates: &[Candidate]) -> Vec<bool> {
        let keep: Vec<bool> = candidates.iter().map(|c| !self.0.is_saturated(c)).collect();
        if keep.iter().any(|&k| k) {
            keep
        } else {
            vec![true; candidates.len()]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::*;
    use crate::test;

    #[test]
    fn gie_thresholds_and_pending_requests() {
        let eps = [endpoint("a:1", load(5, 0, 0.1)), endpoint("b:1", load(0, 0, 0.8)), endpoint("c:1", load(4, 0, 0.79))];
        let mut view = candidates(&eps);
        let f = SaturationFilter(Saturation::default());
        assert_eq!(f.keep(&SchedulingRequest::default(), &view), vec![false, false, true]);
        view[2].pending = 1; // one more sent since the scrape: c's queue reaches 5
        assert_eq!(f.keep(&SchedulingRequest::default(), &view), vec![true; 3], "all saturated: keep all");
    }
}
