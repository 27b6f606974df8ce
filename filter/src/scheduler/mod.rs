//! The scheduler framework, in the shape of GIE's: a profile is filters, then weighted
//! scorers (each score in [0, 1]), then one picker that ranks what is left. Plugins are
//! types behind these traits, one per file, found by name in `registry`.

pub mod config;
pub mod filters;
pub mod gie;
pub mod pickers;
pub mod registry;
pub mod scorers;

use std::ops::Deref;

use crate::request::Prompt;
use crate::store::SharedStore;
use crate::rng::Rng;
use crate::table::EndpointState;

/// What the scheduler knows of the request.
#[derive(Clone, Copy, Default)]
pub struct SchedulingRequest<'a> {
    /// The model (base or adapter) to serve, after any rewrite; `None` for bodiless or
    /// non-model requests.
    pub model: Option<&'a str>,
    /// The start of the prompt (the raw JSON of the chat `messages`, or of the completion
    /// `prompt`), as many bytes as the profile's plugins asked for.
    pub prompt: Prompt<'a>,
    /// The objective's priority: negative is sheddable.
    pub priority: i32,
    /// What the workers of this proxy share (proxy-wasm shared data), if anything.
    pub store: Option<&'a dyn SharedStore>,
}

/// An endpoint as the scheduler sees it: the scraped state, and the requests sent to it
/// since that state was scraped (this proxy's, scaled to the replicas it hears).
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub endpoint: &'a EndpointState,
    /// Requests sent and not finished that the scraped metrics cannot show yet.
    pub pending: u32,
}

impl<'a> Candidate<'a> {
    pub fn new(endpoint: &'a EndpointState) -> Self {
        Candidate { endpoint, pending: 0 }
    }
    /// Waiting requests, counting the ones sent since the scrape: they queue until the
    /// server's next step admits them.
    pub fn queue(&self) -> u32 {
        self.endpoint.metrics.waiting.saturating_add(self.pending)
    }
    /// Running requests, counting the ones sent since the scrape.
    pub fn running(&self) -> u32 {
        self.endpoint.metrics.running.saturating_add(self.pending)
    }
}

impl Deref for Candidate<'_> {
    type Target = EndpointState;
    fn deref(&self) -> &EndpointState {
        self.endpoint
    }
}

pub trait Filter {
    fn name(&self) -> &'static str;
    /// Whether each candidate stays. A filter that would leave none should keep all and let
    /// the scorers decide, unless emptiness is its point (and then the caller answers 503).
    fn keep(&self, request: &SchedulingRequest, candidates: &[Candidate]) -> Vec<bool>;
}

pub trait Scorer {
    fn name(&self) -> &'static str;
    /// One score in [0, 1] per candidate, higher is better: `scores[i]` for
    /// `candidates[i]`, every one 0 on entry.
    fn score(&mut self, request: &SchedulingRequest, candidates: &[Candidate], scores: &mut [f64]);
    /// The request went to `chosen`: a scorer that learns from decisions (the prefix
    /// scorer) records it here. Called once per decision, right after every `score` of
    /// the same request, so a scorer may keep what `score` worked out for it.
    fn picked(&mut self, _request: &SchedulingRequest, _chosen: &Candidate) {}
    /// Prompt bytes this scorer reads; the request is parsed only as far as some scorer needs.
    fn prompt_bytes(&self) -> usize {
        0
    }
}

pub trait Picker {
    fn name(&self) -> &'static str;
    /// Candidate indices, best first, at most `want` of them: the choice, then fallbacks.
    fn pick(&self, totals: &[f64], want: usize, rng: &mut Rng) -> Vec<usize>;
}

pub struct WeightedScorer {
    pub weight: f64,
    pub scorer: Box<dyn Scorer>,
}

pub struct Profile {
    pub name: String,
    pub filters: Vec<Box<dyn Filter>>,
    pub scorers: Vec<WeightedScorer>,
    pub picker: Box<dyn Picker>,
    /// The totals and one scorer's column, kept from decision to decision: an allocation
    /// costs a few hundred wasm instructions, a decision's whole bookkeeping a few thousand.
    scratch: (Vec<f64>, Vec<f64>),
}

/// One decision: `ranked`, and what led to it (for the explain header and the host-sim
/// CLI) only when `schedule` is asked to explain: keeping it is not free.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// Indices into the candidates given to `schedule`, best first.
    pub ranked: Vec<usize>,
    /// Candidates each filter removed, by filter name.
    pub filtered_out: Vec<(&'static str, Vec<usize>)>,
    /// Weighted total per candidate (NaN for filtered-out ones).
    pub totals: Vec<f64>,
    /// Each scorer's name, weight and raw scores per candidate.
    pub columns: Vec<(&'static str, f64, Vec<f64>)>,
}

impl Profile {
    pub fn new(name: String, picker: Box<dyn Picker>) -> Self {
        Profile { name, filters: vec![], scorers: vec![], picker, scratch: Default::default() }
    }

    pub fn schedule(
        &mut self,
        request: &SchedulingRequest,
        candidates: &[Candidate],
        want: usize,
        rng: &mut Rng,
        explain: bool,
    ) -> Decision {
        let mut decision = Decision::default();
        // The indices still in play after the filters and those candidates, once a filter
        // took some out (until then, all of them: nothing copied).
        let mut filtered: Option<(Vec<usize>, Vec<Candidate>)> = None;
        for filter in &self.filters {
            let view = filtered.as_ref().map_or(candidates, |(_, v)| v);
            let keep = filter.keep(request, view);
            if !keep.contains(&false) {
                continue;
            }
            let alive: Vec<usize> = match &filtered {
                Some((alive, _)) => alive.clone(),
                None => (0..candidates.len()).collect(),
            };
            if explain {
                let removed = alive.iter().zip(&keep).filter(|(_, &k)| !k).map(|(&i, _)| i).collect();
                decision.filtered_out.push((filter.name(), removed));
            }
            let alive: Vec<usize> = alive.iter().zip(&keep).filter(|(_, &k)| k).map(|(&i, _)| i).collect();
            let view = alive.iter().map(|&i| candidates[i]).collect();
            filtered = Some((alive, view));
        }
        let (alive, view): (Option<&[usize]>, &[Candidate]) = match &filtered {
            Some((alive, view)) => (Some(alive), view),
            None => (None, candidates),
        };
        let (totals, column) = &mut self.scratch;
        totals.clear();
        totals.resize(view.len(), 0.0);
        for ws in &mut self.scorers {
            column.clear();
            column.resize(view.len(), 0.0);
            ws.scorer.score(request, view, column);
            for (t, s) in totals.iter_mut().zip(column.iter()) {
                // A plugin returning NaN or out-of-range scores must not poison the ranking.
                let s = if s.is_nan() { 0.0 } else { s.clamp(0.0, 1.0) };
                *t += ws.weight * s;
            }
            if explain {
                decision.columns.push((ws.scorer.name(), ws.weight, spread(alive, column, candidates.len())));
            }
        }
        let ranked = self.picker.pick(totals, want, rng);
        decision.ranked = match alive {
            Some(alive) => ranked.into_iter().filter_map(|i| alive.get(i).copied()).collect(),
            None => ranked,
        };
        if explain {
            decision.totals = spread(alive, totals, candidates.len());
        }
        if let Some(&first) = decision.ranked.first() {
            for ws in &mut self.scorers {
                ws.scorer.picked(request, &candidates[first]);
            }
        }
        decision
    }

    /// Prompt bytes the plugins of this profile read.
    pub fn prompt_bytes(&self) -> usize {
        self.scorers.iter().map(|s| s.scorer.prompt_bytes()).max().unwrap_or(0)
    }
}

/// Scores of the alive candidates (`None`: all of them) laid out over all candidates
/// (NaN for the others).
fn spread(alive: Option<&[usize]>, values: &[f64], n: usize) -> Vec<f64> {
    let Some(alive) = alive else { return values.to_vec() };
    let mut out = vec![f64::NAN; n];
    for (&i, &v) in alive.iter().zip(values) {
        out[i] = v;
    }
    out
}

/// GIE's normalisation for "less is better" gauges: (max − x) / (max − min), and 1 for all
/// when they are equal.
pub(crate) fn less_is_better(values: impl Iterator<Item = f64> + Clone, scores: &mut [f64]) {
    // Compared, not `f64::min`/`max`: wasm32 has no instruction with their NaN rule, so
    // they compile to calls to libm's `fmin`/`fmax` (4% of a decision's instructions over
    // 256 endpoints). A NaN is passed over here as they pass it over.
    let (min, max) = values.clone().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (if v < lo { v } else { lo }, if v > hi { v } else { hi })
    });
    let range = max - min;
    for (s, v) in scores.iter_mut().zip(values) {
        *s = if range > 0.0 { (max - v) / range } else { 1.0 };
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::{Candidate, Scorer, SchedulingRequest};
    use crate::table::{EndpointState, Health, Metrics};

    /// What `scorer` gives each of `candidates`, as the profile calls it.
    pub fn scored(scorer: &mut dyn Scorer, request: &SchedulingRequest, candidates: &[Candidate]) -> Vec<f64> {
        let mut scores = vec![0.0; candidates.len()];
        scorer.score(request, candidates, &mut scores);
        scores
    }

    pub fn candidates(endpoints: &[EndpointState]) -> Vec<Candidate<'_>> {
        endpoints.iter().map(Candidate::new).collect()
    }

    pub fn endpoint(address: &str, metrics: Metrics) -> EndpointState {
        EndpointState {
            address: address.into(),
            health: Health::Healthy,
            checked_ms: 1000,
            last_ok_ms: 1000,
            metrics,
            models: vec!["base".into()],
            adapters: vec![],
            in_flight_at_scrape: 0,
            ..Default::default()
        }
    }

    pub fn load(waiting: u32, running: u32, kv_usage: f32) -> Metrics {
        Metrics { waiting, running, kv_usage, ..Default::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::test;

    #[test]
    fn default_profile_prefers_the_least_loaded() {
        let eps = [
            endpoint("a:1", load(10, 8, 0.9)),
            endpoint("b:1", load(0, 1, 0.1)),
            endpoint("c:1", load(3, 4, 0.5)),
        ];
        let view = candidates(&eps);
        let mut profile = config::build(None).expect("the default preset builds");
        let d = profile.schedule(&SchedulingRequest::default(), &view, 3, &mut Rng::new(7), true);
        assert_eq!(d.ranked, vec![1, 2, 0]);
        assert!(d.totals[1] > d.totals[2] && d.totals[2] > d.totals[0]);
        assert_eq!(d.columns.len(), profile.scorers.len());
        let quiet = profile.schedule(&SchedulingRequest::default(), &view, 3, &mut Rng::new(7), false);
        assert_eq!(quiet.ranked, d.ranked, "explaining does not change the decision");
        assert!(quiet.columns.is_empty() && quiet.totals.is_empty());
    }

    #[test]
    fn ties_are_broken_at_random() {
        let eps = [endpoint("a:1", load(1, 1, 0.1)), endpoint("b:1", load(1, 1, 0.1))];
        let view = candidates(&eps);
        let mut profile = config::build(None).expect("the default preset builds");
        let mut rng = Rng::new(3);
        let firsts: Vec<usize> = (0..200)
            .map(|_| profile.schedule(&SchedulingRequest::default(), &view, 1, &mut rng, false).ranked[0])
            .collect();
        let a = firsts.iter().filter(|&&i| i == 0).count();
        assert!((60..140).contains(&a), "{a} of 200 went to the first");
    }
}
