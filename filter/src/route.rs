//! One routing decision, from the table and the request to a destination list or a
//! rejection. Pure: the ABI glue gives it the table, the time and the request.

use crate::config::Config;
use crate::errors::Rejection;
use crate::rng::Rng;
use crate::scheduler::{Decision, Profile, SchedulingRequest};
use crate::table::{EndpointState, Health, Table};

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Addresses for the destination header: the choice, then fallbacks.
    Route { endpoints: Vec<String>, fail_open: bool, explain: Option<String> },
    Reject(Rejection),
}

pub struct Router {
    pub config: Config,
    pub profile: Profile,
    rng: Rng,
    /// Where the next fail-open request goes in the configured list.
    round_robin: usize,
}

impl Router {
    pub fn new(config: Config, profile: Profile, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        // Workers start their fail-open rotation at different places.
        let round_robin = rng.below(config.endpoints.len().max(1));
        Router { config, profile, rng, round_robin }
    }

    pub fn decide(&mut self, table: Option<&Table>, model: Option<&str>, now_ms: u64) -> Outcome {
        let want = 1 + self.config.max_fallbacks;
        let stale_after = self.config.stale_after_ms;
        let fresh = table.filter(|t| {
            !t.is_stale(now_ms, stale_after)
                && t.endpoints.iter().any(|e| !e.is_stale(now_ms, stale_after))
        });
        let Some(table) = fresh else {
            return self.fail_open(want);
        };

        let serving: Vec<&EndpointState> = table
            .endpoints
            .iter()
            .filter(|e| model.is_none_or(|m| e.models_unknown() || e.serves(m)))
            .collect();
        if serving.is_empty() {
            // `model` is Some here: without one every endpoint "serves".
            return Outcome::Reject(Rejection::model_not_found(model.unwrap_or_default()));
        }
        let usable: Vec<&EndpointState> =
            serving.iter().copied().filter(|e| e.is_usable(now_ms, stale_after)).collect();
        if usable.is_empty() {
            let what = model.map_or("any model".to_string(), |m| format!("model `{m}`"));
            return Outcome::Reject(Rejection::unavailable(format!(
                "No healthy endpoint serves {what} right now ({}).",
                first_reason(&serving)
            )));
        }

        let request = SchedulingRequest { model };
        let decision = self.profile.schedule(&request, &usable, want, &mut self.rng);
        if decision.ranked.is_empty() {
            return Outcome::Reject(Rejection::unavailable("Every endpoint was filtered out."));
        }
        let endpoints = decision.ranked.iter().map(|&i| usable[i].address.clone()).collect();
        let explain = self.config.explain.then(|| explain(&usable, &decision));
        Outcome::Route { endpoints, fail_open: false, explain }
    }

    /// No fresh table: spread over the configured endpoints rather than fail traffic.
    fn fail_open(&mut self, want: usize) -> Outcome {
        let all = &self.config.endpoints;
        let n = all.len();
        let start = self.round_robin % n.max(1);
        self.round_robin = self.round_robin.wrapping_add(1);
        let endpoints = (0..want.min(n)).map(|k| all[(start + k) % n].clone()).collect();
        Outcome::Route { endpoints, fail_open: true, explain: None }
    }
}

fn first_reason(endpoints: &[&EndpointState]) -> String {
    let unhealthy = endpoints.iter().find_map(|e| match &e.health {
        Health::Unhealthy(why) => Some(format!("{}: {why}", e.address)),
        _ => None,
    });
    unhealthy.unwrap_or_else(|| "no fresh metrics".into())
}

/// `addr total (scorer=score …); …` in rank order, then what filters removed.
fn explain(candidates: &[&EndpointState], d: &Decision) -> String {
    let mut parts = Vec::new();
    for &i in &d.ranked {
        let scores: Vec<String> = d
            .columns
            .iter()
            .map(|(name, weight, col)| format!("{name}={:.3}x{weight}", col[i]))
            .collect();
        parts.push(format!("{} {:.3} ({})", candidates[i].address, d.totals[i], scores.join(" ")));
    }
    for (filter, removed) in &d.filtered_out {
        let addrs: Vec<&str> = removed.iter().map(|&i| candidates[i].address.as_str()).collect();
        parts.push(format!("{filter} removed {}", addrs.join(" ")));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::registry::default_profile;
    use crate::scheduler::testing::{endpoint, load};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW: u64 = 1500;

    fn router(n: usize) -> Router {
        let endpoints: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:8000")).collect();
        let doc = serde_json::json!({"endpoints": endpoints, "max_fallbacks": 1});
        let config = Config::parse(doc.to_string().as_bytes()).unwrap();
        Router::new(config, default_profile(), 1)
    }

    fn table(endpoints: Vec<EndpointState>) -> Table {
        Table { published_ms: 1000, generation: 1, endpoints }
    }

    fn route(o: Outcome) -> Vec<String> {
        match o {
            Outcome::Route { endpoints, fail_open: false, .. } => endpoints,
            other => panic!("expected a scheduled route, got {other:?}"),
        }
    }

    fn status(o: Outcome) -> u32 {
        match o {
            Outcome::Reject(r) => r.status,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn routes_to_least_loaded_with_a_fallback() {
        let t = table(vec![endpoint("a:1", load(9, 9, 0.9)), endpoint("b:1", load(0, 0, 0.0))]);
        assert_eq!(route(router(2).decide(Some(&t), Some("base"), NOW)), vec!["b:1", "a:1"]);
    }

    #[test]
    fn model_filter_404_and_503() {
        let mut other = endpoint("a:1", load(0, 0, 0.0));
        other.models = vec!["other".into()];
        let mut down = endpoint("b:1", load(0, 0, 0.0));
        down.health = Health::Unhealthy("connection refused".into());
        let t = table(vec![other.clone(), down]);
        let mut r = router(2);
        assert_eq!(status(r.decide(Some(&t), Some("nope"), NOW)), 404);
        assert_eq!(status(r.decide(Some(&t), Some("base"), NOW)), 503);
        assert_eq!(route(r.decide(Some(&t), Some("other"), NOW)), vec!["a:1"]);
        // Bodiless requests go to any healthy endpoint.
        assert_eq!(route(r.decide(Some(&t), None, NOW)), vec!["a:1"]);
    }

    #[test]
    fn unknown_models_may_serve_anything() {
        let mut e = endpoint("a:1", load(0, 0, 0.0));
        e.models.clear();
        assert_eq!(route(router(1).decide(Some(&table(vec![e])), Some("x"), NOW)), vec!["a:1"]);
    }

    #[test]
    fn stale_endpoints_are_skipped_and_all_stale_fails_open() {
        let mut old = endpoint("a:1", load(0, 0, 0.0));
        old.last_ok_ms = 0;
        old.checked_ms = 0;
        let t = table(vec![old.clone(), endpoint("b:1", load(5, 5, 0.5))]);
        let mut r = router(2);
        assert_eq!(route(r.decide(Some(&t), Some("base"), 2500)), vec!["b:1"]);
        // Every endpoint's news older than stale_after_ms: fail open over the config.
        let t = table(vec![old]);
        let firsts: Vec<String> = (0..4)
            .map(|_| match r.decide(Some(&t), Some("base"), 2500) {
                Outcome::Route { endpoints, fail_open: true, .. } => endpoints[0].clone(),
                o => panic!("{o:?}"),
            })
            .collect();
        assert_ne!(firsts[0], firsts[1], "fail-open spreads: {firsts:?}");
        assert_eq!(firsts[0], firsts[2]);
        // No table at all, or a table the scraper stopped updating: fail open too.
        assert!(matches!(r.decide(None, None, NOW), Outcome::Route { fail_open: true, .. }));
        let t = table(vec![endpoint("b:1", load(0, 0, 0.0))]);
        assert!(matches!(r.decide(Some(&t), None, 9999), Outcome::Route { fail_open: true, .. }));
    }

    #[test]
    fn explain_lists_every_score() {
        let mut r = router(2);
        r.config.explain = true;
        let t = table(vec![endpoint("a:1", load(1, 0, 0.0)), endpoint("b:1", load(0, 0, 0.0))]);
        match r.decide(Some(&t), Some("base"), NOW) {
            Outcome::Route { explain: Some(text), .. } => {
                assert!(text.starts_with("b:1 "), "{text}");
                assert!(text.contains("queue-scorer=0.000x2"), "{text}");
            }
            o => panic!("{o:?}"),
        }
    }
}
