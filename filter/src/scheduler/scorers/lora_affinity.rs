use crate::scheduler::{Candidate, Scorer, SchedulingRequest};
use crate::table::same_name;

/// Send an adapter where it already runs, else where a slot is free, so adapters are not
/// swapped in and out (GIE's scores: 1.0 running, 0.8 free slot, 0.6 waiting, 0 otherwise).
/// A base model needs no adapter slot: 1.0 where it is served.
pub struct LoraAffinityScorer;

impl Scorer for LoraAffinityScorer {
    fn name(&self) -> &'static str {
        "lora-affinity-scorer"
    }
    fn score(&mut self, request: &SchedulingRequest, candidates: &[Candidate], out: &mut Vec<f64>) {
        let Some(model) = request.model else {
            out.extend(candidates.iter().map(|_| 1.0));
            return;
        };
        out.extend(candidates.iter().map(|e| {
            let m = &e.metrics;
            if e.serves_base(model) || m.running_adapters.iter().any(|a| same_name(a, model)) {
                1.0
            } else if m.max_lora > 0 && (m.running_adapters.len() as u32) < m.max_lora {
                0.8
            } else if m.waiting_adapters.iter().any(|a| same_name(a, model)) {
                0.6
            } else {
                0.0
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::*;
    use crate::table::Metrics;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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
        let mut out = vec![];
        let req = SchedulingRequest { model: Some("x"), ..Default::default() };
        LoraAffinityScorer.score(&req, &view, &mut out);
        assert_eq!(out, vec![1.0, 0.8, 0.6, 0.0]);
        out.clear();
        LoraAffinityScorer.score(&SchedulingRequest { model: Some("base"), ..Default::default() }, &view, &mut out);
        assert_eq!(out, vec![1.0; 4]);
    }
}
