use crate::scheduler::{Candidate, Filter, SchedulingRequest};
use crate::table::{same_name, EndpointState};

/// For an adapter request, keep only endpoints that can run it now: the adapter is already
/// running there, or an adapter slot is free. Elsewhere the request would wait until a
/// running adapter drains, which can take as long as the longest generation in flight.
/// If no endpoint can run it now, all stay and the scorers decide.
pub struct LoraAffinityFilter;

impl Filter for LoraAffinityFilter {
    fn name(&self) -> &'static str {
        "lora-affinity-filter"
    }

    fn keep(&self, request: &SchedulingRequest, candidates: &[Candidate]) -> Vec<bool> {
        let ready: Vec<bool> = match request.model {
            Some(model) => candidates.iter().map(|e| can_run_now(e, model)).collect(),
            None => vec![true; candidates.len()],
        };
        if ready.iter().any(|&r| r) {
            ready
        } else {
            vec![true; candidates.len()]
        }
    }
}

fn can_run_now(e: &EndpointState, model: &str) -> bool {
    let m = &e.metrics;
    e.serves_base(model)
        || m.running_adapters.iter().any(|a| same_name(a, model))
        // max_lora 0: LoRA state not reported, nothing to go by.
        || m.max_lora == 0
        || (m.running_adapters.len() as u32) < m.max_lora
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::*;
    use crate::table::Metrics;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn lora(running: &[&str], max: u32) -> Metrics {
        Metrics {
            max_lora: max,
            running_adapters: running.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_endpoints_that_can_run_the_adapter_now() {
        let eps = [
            endpoint("a:1", lora(&["x"], 1)),
            endpoint("b:1", lora(&["y"], 1)),
            endpoint("c:1", lora(&["y"], 2)),
            endpoint("d:1", lora(&[], 0)),
        ];
        let view = candidates(&eps);
        let keep = LoraAffinityFilter.keep(&SchedulingRequest { model: Some("x"), ..Default::default() }, &view);
        assert_eq!(keep, vec![true, false, true, true]);
        let keep = LoraAffinityFilter.keep(&SchedulingRequest { model: Some("base"), ..Default::default() }, &view);
        assert_eq!(keep, vec![true; 4]);
    }

    #[test]
    fn keeps_all_when_none_can() {
        let eps = [endpoint("a:1", lora(&["y"], 1)), endpoint("b:1", lora(&["z"], 1))];
        let view = candidates(&eps);
        assert_eq!(LoraAffinityFilter.keep(&SchedulingRequest { model: Some("x"), ..Default::default() }, &view), vec![true, true]);
    }
}
