use crate::scheduler::{Candidate, Scorer, SchedulingRequest};
use crate::table::same_name;

/// Send an adapter where it already runs, else where a slot is free, so adapters are not
/// swapped in and out (GIE's scores: 1.0 running, 0.8 free slot, 0.6 waiting, 0 otherwise).
/// A base model needs no adapter slot: 1.0 where it is served.
pub struct LoraAffinityScorer;

impl LoraAffinityScorer {
    /// The type name configurations use.
    pub const TYPE: &'static str = "lora-affinity-scorer";
}

impl Scorer for LoraAffinityScorer {
    fn name(&self) -> &'static str {
        Self::TYPE
    }
    fn score(&mut self, request: &SchedulingRequest, candidates: &[Candidate], scores: &mut [f64]) {
        let Some(model) = request.model else {
            scores.fill(1.0);
            return;
        };
        for (s, e) in scores.iter_mut().zip(candidates) {
            let m = &e.metrics;
            *s = 
            if e.serves_base(model) || m.running_adapters.iter().any(|a| same_name(a, model)) {
                1.0
            } else if m.max_lora > 0 && (m.running_adapters.len() as u32) < m.max_lora {
                0.8
            } else if m.waiting_adapters.iter().any(|a| same_name(a, model)) {
                0.6
            } else {
                0.0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::*;
    use crate::table::Metrics;
    use crate::test;

    #[test]
    fn gie_scores() {
        let lora = |running: &[&str], waiting: &[&str], max| Metrics {
            max_lora: max,
            running_adapters: running.iter().map(|s| s.to_string()).collect(),
            waiting_adapters: waiting.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let eps = [
            endpoint("a:1", lora(&["x"], &[], 2)),
            endpoint("b:1", lora(&["y"], &[], 2)),
            endpoint("c:1", lora(&["y", "z"], &["x"], 2)),
            endpoint("d:1", lora(&["y", "z"], &[], 2)),
        ];
        let view = candidates(&eps);
        let mut out: Vec<f64>;
        let req = SchedulingRequest { model: Some("x"), ..Default::default() };
        out = scored(&mut LoraAffinityScorer, &req, &view);
        assert_eq!(out, vec![1.0, 0.8, 0.6, 0.0]);
        out = scored(&mut LoraAffinityScorer, &SchedulingRequest { model: Some("base"), ..Default::default() }, &view);
        assert_eq!(out, vec![1.0; 4]);
    }
}
