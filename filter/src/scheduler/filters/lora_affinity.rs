use crate::rendezvous;
use crate::scheduler::{Candidate, Filter, SchedulingRequest};
use crate::table::{same_name, EndpointState};

/// Where an adapter request can start soon, in order of preference:
/// 1. where the adapter runs with room (a queue under 5, GIE's threshold) and no other
///    adapter waits for a slot (more traffic there would keep that slot from freeing:
///    vLLM admits the running adapters' requests past a waiting one);
/// 2. where it runs with room;
/// 3. where a slot is free, narrowed to the adapter's two *homes* (first by rendezvous
///    hashing of its name): every worker and proxy loads a cold adapter in the same places,
///    so it ends up running in one or two spots instead of waiting in several.
///
/// Keeping each adapter on few endpoints is what keeps slots from filling with every
/// adapter everywhere. If no endpoint can run it now, all stay and the scorers decide.
pub struct LoraAffinityFilter;

const ROOMY_QUEUE: u32 = 5;
const ADAPTER_HOMES: usize = 2;

impl LoraAffinityFilter {
    /// The type name configurations use.
    pub const TYPE: &'static str = "lora-affinity-filter";
}

impl Filter for LoraAffinityFilter {
    fn name(&self) -> &'static str {
        Self::TYPE
    }

    fn keep(&self, request: &SchedulingRequest, candidates: &[Candidate]) -> Vec<bool> {
        let all = vec![true; candidates.len()];
        let Some(model) = request.model else { return all };
        if candidates.iter().any(|c| c.serves_base(model)) {
            return all; // a base model needs no adapter slot
        }
        let nothing_else_waits = |c: &Candidate| c.metrics.waiting_adapters.iter().all(|a| same_name(a, model));
        let roomy = |c: &Candidate| runs(c, model) && c.queue() < ROOMY_QUEUE;
        let quiet = |c: &Candidate| roomy(c) && nothing_else_waits(c);
        let tiers: [&dyn Fn(&Candidate) -> bool; 2] = [&quiet, &roomy];
        for tier in tiers {
            let keep: Vec<bool> = candidates.iter().map(tier).collect();
            if keep.contains(&true) {
                return keep;
            }
        }
        let free: Vec<usize> = (0..candidates.len()).filter(|&i| can_run_now(&candidates[i], model)).collect();
        if free.is_empty() {
            return all;
        }
        let order = rendezvous::rank(rendezvous::name_hash(model), free.iter().map(|&i| candidates[i].address.as_str()));
        let mut homes = vec![false; candidates.len()];
        for &k in order.iter().take(ADAPTER_HOMES) {
            homes[free[k]] = true;
        }
        homes
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
    use crate::test;

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
        assert_eq!(LoraAffinityFilter.keep(&req, &view), vec![false, false, true], "the only free slot");
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
    fn a_cold_adapter_goes_to_the_same_two_homes_everywhere() {
        let eps: Vec<_> = (1..=8).map(|i| endpoint(&format!("10.0.0.{i}:8000"), lora(&[], 2))).collect();
        let view = candidates(&eps);
        let req = SchedulingRequest { model: Some("cold"), ..Default::default() };
        let keep = LoraAffinityFilter.keep(&req, &view);
        assert_eq!(keep.iter().filter(|&&k| k).count(), 2);
        let reversed: Vec<_> = view.iter().rev().copied().collect();
        let mut again = LoraAffinityFilter.keep(&req, &reversed);
        again.reverse();
        assert_eq!(keep, again, "the homes do not depend on the order endpoints come in");
        let other = LoraAffinityFilter.keep(&SchedulingRequest { model: Some("other"), ..Default::default() }, &view);
        assert_eq!(other.iter().filter(|&&k| k).count(), 2);
    }

    #[test]
    fn keeps_all_when_none_can() {
        let eps = [endpoint("a:1", lora(&["y"], 1)), endpoint("b:1", lora(&["z"], 1))];
        let view = candidates(&eps);
        assert_eq!(LoraAffinityFilter.keep(&SchedulingRequest { model: Some("x"), ..Default::default() }, &view), vec![true, true]);
    }
}
