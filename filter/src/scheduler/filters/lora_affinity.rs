use crate::scheduler::{Candidate, Filter, SchedulingRequest};
use crate::table::{same_name, EndpointState};

/// For an adapter request, keep the endpoints where the adapter already runs and has
/// room (a queue under 5, GIE's threshold), preferring those where no other adapter waits
/// for a slot; if none, the ones that can run it now (it runs there, or a slot is free). Elsewhere the request waits until a running
/// adapter drains, which under steady traffic can be never (vLLM admits other adapters'
/// requests past it). Preferring where it runs over a free slot keeps each adapter on few
/// endpoints, so slots do not fill with every adapter everywhere.
/// If no endpoint can run it now, all stay and the scorers decide.
pub struct LoraAffinityFilter;

const ROOMY_QUEUE: u32 = 5;

impl Filter for LoraAffinityFilter {
    fn name(&self) -> &'static str {
        "lora-affinity-filter"
    }

    fn keep(&self, request: &SchedulingRequest, candidates: &[Candidate]) -> Vec<bool> {
        let all = vec![true; candidates.len()];
        let Some(model) = request.model else { return all };
        if candidates.iter().any(|c| c.serves_base(model)) {
            return all; // a base model needs no adapter slot
        }
        // Where another adapter waits for a slot, more of this one's traffic would keep
        // that slot from ever freeing: prefer places where nothing else waits.
        let nothing_else_waits = |c: &Candidate| c.metrics.waiting_adapters.iter().all(|a| same_name(a, model));
        let tiers: [&dyn Fn(&Candidate) -> bool; 3] = [
            &|c| runs(c, model) && c.queue() < ROOMY_QUEUE && nothing_else_waits(c),
            &|c| runs(c, model) && c.queue() < ROOMY_QUEUE,
            &|c| can_run_now(c, model),
        ];
        for tier in tiers {
            let keep: Vec<bool> = candidates.iter().map(tier).collect();
            if keep.iter().any(|&k| k) {
                return keep;
            }
        }
        all
    }
}

/// A base model it serves, or an adapter with requests running there.
fn runs(e: &EndpointState, model: &str) -> bool {
    e.serves_base(model) || e.metrics.running_adapters.iter().any(|a| same_name(a, model))
}

fn can_run_now(e: &EndpointState, model: &str) -> bool {
    let m = &e.metrics;
    runs(e, model)
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
        assert_eq!(keep, vec![true, false, false, false], "where it runs first");
        let keep = LoraAffinityFilter.keep(&SchedulingRequest { model: Some("base"), ..Default::default() }, &view);
        assert_eq!(keep, vec![true; 4]);
    }

    #[test]
    fn free_slots_when_it_runs_nowhere_or_only_where_busy() {
        let eps = [endpoint("a:1", lora(&["x"], 1)), endpoint("b:1", lora(&["y"], 1)), endpoint("c:1", lora(&["y"], 2))];
        let mut view = candidates(&eps);
        let req = SchedulingRequest { model: Some("z"), ..Default::default() };
        assert_eq!(LoraAffinityFilter.keep(&req, &view), vec![false, false, true]);
        view[0].pending = 5; // a's queue is no longer roomy
        let req = SchedulingRequest { model: Some("x"), ..Default::default() };
        assert_eq!(LoraAffinityFilter.keep(&req, &view), vec![true, false, true]);
    }

    #[test]
    fn avoids_feeding_a_slot_another_adapter_waits_for() {
        let mut busy = lora(&["x", "y"], 2);
        busy.waiting_adapters = vec!["z".into()];
        let eps = [endpoint("a:1", busy), endpoint("b:1", lora(&["x"], 2))];
        let view = candidates(&eps);
        let req = SchedulingRequest { model: Some("x"), ..Default::default() };
        assert_eq!(LoraAffinityFilter.keep(&req, &view), vec![false, true], "z waits on a: x goes to b");
    }

    #[test]
    fn keeps_all_when_none_can() {
        let eps = [endpoint("a:1", lora(&["y"], 1)), endpoint("b:1", lora(&["z"], 1))];
        let view = candidates(&eps);
        assert_eq!(LoraAffinityFilter.keep(&SchedulingRequest { model: Some("x"), ..Default::default() }, &view), vec![true, true]);
    }
}
