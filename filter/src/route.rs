//! One routing decision, from the table and the request to a destination list or a
//! rejection. Pure: the ABI glue gives it the table, the time and the request.

use crate::config::Config;
use crate::errors::Rejection;
use crate::rewrite;
use crate::rng::Rng;
use crate::scheduler::{Candidate, Decision, Profile, SchedulingRequest};
use crate::table::{EndpointState, Health, Table};

/// The request header naming the objective (and so the priority) of a request.
pub const OBJECTIVE_HEADER: &str = crate::names::headers::OBJECTIVE;
/// The request header restricting the endpoints to a comma list of `ip:port`.
pub const SUBSET_HEADER: &str = crate::names::headers::SUBSET;

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Route {
        /// Addresses for the destination header: the choice, then fallbacks. Empty when
        /// failing open with no endpoint known: Envoy's own load balancer chooses.
        endpoints: Vec<String>,
        /// The in-flight slot of the choice, where the table knows it.
        slot: Option<usize>,
        fail_open: bool,
        explain: Option<String>,
        /// The model a rewrite rule chose: the body must say this instead.
        rewritten: Option<String>,
        /// Failing open because no endpoint's metrics are usable, though the servers
        /// answer: the reason, for the one log line the operator needs.
        outage: Option<String>,
    },
    Reject(Rejection),
}

/// What the router reads of one request.
#[derive(Clone, Copy, Default)]
pub struct Incoming<'a> {
    pub model: Option<&'a str>,
    /// The start of the prompt, as far as `Router::prompt_bytes` asked.
    pub prompt: crate::request::Prompt<'a>,
    /// The objective header, if any.
    pub objective: Option<&'a str>,
    /// The subset header, if any.
    pub subset: Option<&'a str>,
    /// The proxy's shared data, for plugins that share state between workers.
    pub store: Option<&'a dyn crate::store::SharedStore>,
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

    /// Prompt bytes the profile reads: the request parser stops there.
    pub fn prompt_bytes(&self) -> usize {
        self.profile.prompt_bytes()
    }

    /// One decision. `in_flight` gives this proxy's requests in flight now to the
    /// endpoint in that slot (`EndpointState::slot`).
    pub fn decide(
        &mut self,
        table: Option<&Table>,
        incoming: &Incoming,
        now_ms: u64,
        in_flight: &dyn Fn(usize) -> i64,
    ) -> Outcome {
        let want = 1 + self.config.max_fallbacks;
        let rewritten =
            incoming.model.and_then(|m| rewrite::rewrite(&self.config.model_rewrites, m, &mut self.rng)).map(str::to_string);
        let model = rewritten.as_deref().or(incoming.model);
        let subset = match incoming.subset.map(parse_subset) {
            Some(list) if list.is_empty() => {
                return Outcome::Reject(Rejection::unavailable(format!("The {SUBSET_HEADER} header lists no endpoint.")))
            }
            other => other,
        };
        let allowed = |address: &str| subset.as_ref().is_none_or(|s| s.contains(&address));

        let stale_after = self.config.stale_after_ms;
        let fresh = table.filter(|t| {
            !t.is_stale(now_ms, stale_after) && t.endpoints.iter().any(|e| !e.is_stale(now_ms, stale_after))
        });
        let Some(table) = fresh else {
            return self.fail_open(table, want, &allowed, rewritten);
        };

        // One pass: the usable endpoints (with their row in the table, which finds their
        // in-flight count), and whether any was in the subset or served the model at all,
        // for the rejection that says which.
        let serves = |e: &EndpointState| model.is_none_or(|m| e.models_unknown() || e.serves(m));
        let (mut any_allowed, mut any_serving) = (false, false);
        // Sized for the whole pool: a filtered iterator would grow it by reallocating.
        let mut usable: Vec<Candidate> = Vec::with_capacity(table.endpoints.len());
        usable.extend(
            table
                .endpoints
                .iter()
                .filter(|e| allowed(&e.address))
                .inspect(|_| any_allowed = true)
                .filter(|e| serves(e))
                .inspect(|_| any_serving = true)
                .filter(|e| e.is_usable(now_ms, stale_after))
                .map(|e| Candidate { endpoint: e, pending: pending(e, in_flight(e.slot as usize), table.replicas) }),
        );
        if !any_allowed {
            return Outcome::Reject(Rejection::unavailable(format!(
                "No endpoint of this pool is in the {SUBSET_HEADER} header."
            )));
        }
        if !any_serving {
            // `model` is Some here: without one every endpoint "serves".
            return Outcome::Reject(Rejection::model_not_found(model.unwrap_or_default()));
        }
        if usable.is_empty() {
            let serving: Vec<&EndpointState> = table.endpoints.iter().filter(|e| allowed(&e.address) && serves(e)).collect();
            // Telemetry failing must not take traffic down: servers that answer their
            // scrapes (with an error, or a page this module cannot read) still accept
            // connections, and Envoy still sends to them.
            let answering: Vec<&EndpointState> = serving
                .iter()
                .copied()
                .filter(|e| e.envoy_unhealthy.is_none() && matches!(e.health, Health::Unhealthy(_)))
                .collect();
            if !answering.is_empty() {
                let why = format!("all endpoints' metrics fail: {}", first_reason(answering.iter().copied()));
                return self.spread(&answering, want, rewritten, why);
            }
            let what = model.map_or("any model".to_string(), |m| format!("model `{m}`"));
            return Outcome::Reject(Rejection::unavailable(format!(
                "No healthy endpoint serves {what} right now ({}).",
                first_reason(serving.into_iter())
            )));
        }

        let (objective, priority) = self.priority(incoming.objective);
        if priority < 0 {
            // Sheddable: only where there is room, and 429 when there is none, so that it
            // never queues in front of requests that matter more.
            usable.retain(|c| !self.config.saturation.is_saturated(c));
            if usable.is_empty() {
                return Outcome::Reject(Rejection::shed(objective, priority));
            }
        }

        let request = SchedulingRequest { model, prompt: incoming.prompt, priority, store: incoming.store };
        let decision = self.profile.schedule(&request, &usable, want, &mut self.rng, self.config.explain);
        if decision.ranked.is_empty() {
            return Outcome::Reject(Rejection::unavailable("Every endpoint was filtered out."));
        }
        let endpoints = decision.ranked.iter().map(|&i| usable[i].address.clone()).collect();
        let slot = decision.ranked.first().map(|&i| usable[i].slot as usize);
        let explain = self.config.explain.then(|| explain(&usable, &decision, objective, priority));
        Outcome::Route { endpoints, slot, fail_open: false, explain, rewritten, outage: None }
    }

    /// The objective's name and priority; unknown or absent objectives have priority 0.
    fn priority<'a>(&self, objective: Option<&'a str>) -> (&'a str, i32) {
        match objective {
            Some(name) => (name, self.config.objectives.get(name).copied().unwrap_or(0)),
            None => ("", 0),
        }
    }

    /// No fresh table: spread over the pool as last known (the list, or the last table's
    /// members; within the subset, if one was given) rather than fail traffic. Knowing no
    /// endpoint at all, leave the choice to Envoy's load balancer.
    fn fail_open(
        &mut self,
        table: Option<&Table>,
        want: usize,
        allowed: &dyn Fn(&str) -> bool,
        rewritten: Option<String>,
    ) -> Outcome {
        let known: Vec<(&str, Option<usize>)> = if self.config.endpoints.is_empty() {
            table.map_or_else(Vec::new, |t| t.endpoints.iter().map(|e| (e.address.as_str(), Some(e.slot as usize))).collect())
        } else {
            self.config.endpoints.iter().enumerate().map(|(slot, e)| (e.as_str(), Some(slot))).collect()
        };
        let pool_known = !known.is_empty();
        let all: Vec<(&str, Option<usize>)> = known.into_iter().filter(|(e, _)| allowed(e)).collect();
        let n = all.len();
        if n == 0 && pool_known {
            return Outcome::Reject(Rejection::unavailable(format!(
                "No endpoint of this pool is in the {SUBSET_HEADER} header."
            )));
        }
        let start = self.round_robin % n.max(1);
        self.round_robin = self.round_robin.wrapping_add(1);
        let endpoints = (0..want.min(n)).map(|k| all[(start + k) % n].0.to_string()).collect();
        let slot = all.get(start).and_then(|(_, slot)| *slot);
        Outcome::Route { endpoints, slot, fail_open: true, explain: None, rewritten, outage: None }
    }

    /// Round robin over `endpoints`, failing open for `why`.
    fn spread(&mut self, endpoints: &[&EndpointState], want: usize, rewritten: Option<String>, why: String) -> Outcome {
        let n = endpoints.len();
        let start = self.round_robin % n.max(1);
        self.round_robin = self.round_robin.wrapping_add(1);
        let chosen: Vec<&EndpointState> = (0..want.min(n)).map(|k| endpoints[(start + k) % n]).collect();
        let slot = chosen.first().map(|e| e.slot as usize);
        let endpoints = chosen.iter().map(|e| e.address.clone()).collect();
        Outcome::Route { endpoints, slot, fail_open: true, explain: None, rewritten, outage: Some(why) }
    }
}

/// Requests sent since the scrape and not finished, by every replica in front of the pool.
/// This proxy counts its own: the difference, not the gauge itself, so that a count that
/// drifted (a VM restarted mid-request) cancels out. The other `replicas` send about as
/// many to the same endpoints meanwhile: the load balancer in front feeds them alike, and
/// they read the same metrics and pick alike (BENCHMARKS.md, overload).
fn pending(e: &EndpointState, in_flight_now: i64, replicas: u32) -> u32 {
    let own = (in_flight_now - e.in_flight_at_scrape).clamp(0, i64::from(u32::MAX)) as u32;
    own.saturating_mul(replicas.max(1))
}

/// The subset header's addresses (`ip:port`, comma-separated, spaces allowed).
fn parse_subset(header: &str) -> Vec<&str> {
    header.split(',').map(str::trim).filter(|a| !a.is_empty()).collect()
}

fn first_reason<'a>(mut endpoints: impl Iterator<Item = &'a EndpointState>) -> String {
    let unhealthy = endpoints.find_map(|e| match (&e.envoy_unhealthy, &e.health) {
        (Some(why), _) => Some(format!("{}: {why}", e.address)),
        (None, health) => health.failure().map(|why| format!("{}: {why}", e.address)),
    });
    unhealthy.unwrap_or_else(|| "no fresh metrics".into())
}

/// `addr total (scorer=score …); …` in rank order, then what filters removed.
fn explain(candidates: &[Candidate], d: &Decision, objective: &str, priority: i32) -> String {
    let mut parts = Vec::new();
    for &i in &d.ranked {
        let scores: Vec<String> = d
            .columns
            .iter()
            .map(|(name, weight, col)| format!("{name}={:.3}x{weight}", col[i]))
            .collect();
        let c = &candidates[i];
        parts.push(format!("{} {:.3} ({} pending={})", c.address, d.totals[i], scores.join(" "), c.pending));
    }
    for (filter, removed) in &d.filtered_out {
        let addrs: Vec<&str> = removed.iter().map(|&i| candidates[i].address.as_str()).collect();
        parts.push(format!("{filter} removed {}", addrs.join(" ")));
    }
    if !objective.is_empty() {
        parts.push(format!("objective {objective} priority {priority}"));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The default preset's profile.
    fn default_profile() -> crate::scheduler::Profile {
        crate::scheduler::config::build(None).expect("the default preset builds")
    }
    use crate::scheduler::testing::{endpoint, load};
    use crate::test;

    const NOW: u64 = 1500;

    fn router(n: usize) -> Router {
        let endpoints: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:8000")).collect();
        let doc = serde_json::json!({"endpoints": endpoints, "max_fallbacks": 1});
        let config = Config::parse(doc.to_string().as_bytes()).unwrap();
        Router::new(config, default_profile(), 1)
    }

    fn ask(r: &mut Router, t: Option<&Table>, model: Option<&str>, now: u64) -> Outcome {
        r.decide(t, &Incoming { model, ..Default::default() }, now, &|_| 0)
    }

    fn table(endpoints: Vec<EndpointState>) -> Table {
        Table { published_ms: 1000, generation: 1, replicas: 1, endpoints: slotted(endpoints) }
    }

    /// Slots in row order, as a scraper of a listed pool gives them.
    fn slotted(mut endpoints: Vec<EndpointState>) -> Vec<EndpointState> {
        for (slot, e) in endpoints.iter_mut().enumerate() {
            e.slot = slot as u32;
        }
        endpoints
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
        assert_eq!(route(ask(&mut router(2), Some(&t), Some("base"), NOW)), vec!["b:1", "a:1"]);
    }

    #[test]
    fn model_filter_404_and_503() {
        let mut other = endpoint("a:1", load(0, 0, 0.0));
        other.models = vec!["other".into()];
        let mut down = endpoint("b:1", load(0, 0, 0.0));
        down.health = Health::Unreachable("connection refused".into());
        let t = table(vec![other.clone(), down]);
        let mut r = router(2);
        assert_eq!(status(ask(&mut r, Some(&t), Some("nope"), NOW)), 404);
        assert_eq!(status(ask(&mut r, Some(&t), Some("base"), NOW)), 503);
        assert_eq!(route(ask(&mut r, Some(&t), Some("other"), NOW)), vec!["a:1"]);
        // Bodiless requests go to any healthy endpoint.
        assert_eq!(route(ask(&mut r, Some(&t), None, NOW)), vec!["a:1"]);
    }

    #[test]
    fn unknown_models_may_serve_anything() {
        let mut e = endpoint("a:1", load(0, 0, 0.0));
        e.models.clear();
        assert_eq!(route(ask(&mut router(1), Some(&table(vec![e])), Some("x"), NOW)), vec!["a:1"]);
    }

    #[test]
    fn stale_endpoints_are_skipped_and_all_stale_fails_open() {
        let mut old = endpoint("a:1", load(0, 0, 0.0));
        old.last_ok_ms = 0;
        old.checked_ms = 0;
        let t = table(vec![old.clone(), endpoint("b:1", load(5, 5, 0.5))]);
        let mut r = router(2);
        assert_eq!(route(ask(&mut r, Some(&t), Some("base"), 2500)), vec!["b:1"]);
        // Every endpoint's news older than stale_after_ms: fail open over the config.
        let t = table(vec![old]);
        let firsts: Vec<String> = (0..4)
            .map(|_| match ask(&mut r, Some(&t), Some("base"), 2500) {
                Outcome::Route { endpoints, fail_open: true, .. } => endpoints[0].clone(),
                o => panic!("{o:?}"),
            })
            .collect();
        assert_ne!(firsts[0], firsts[1], "fail-open spreads: {firsts:?}");
        assert_eq!(firsts[0], firsts[2]);
        // No table at all, or a table the scraper stopped updating: fail open too.
        assert!(matches!(ask(&mut r, None, None, NOW), Outcome::Route { fail_open: true, .. }));
        let t = table(vec![endpoint("b:1", load(0, 0, 0.0))]);
        assert!(matches!(ask(&mut r, Some(&t), None, 9999), Outcome::Route { fail_open: true, .. }));
    }

    #[test]
    fn a_discovered_pool_fails_open_over_the_last_members_or_leaves_it_to_envoy() {
        let config = Config::parse(br#"{"pool_cluster":"llm_pool","max_fallbacks":1}"#).unwrap();
        let mut r = Router::new(config, default_profile(), 1);
        match ask(&mut r, None, Some("base"), NOW) {
            Outcome::Route { endpoints, slot: None, fail_open: true, .. } => assert!(endpoints.is_empty()),
            o => panic!("{o:?}"),
        }
        let mut t = table(vec![endpoint("a:1", load(0, 0, 0.0)), endpoint("b:1", load(0, 0, 0.0))]);
        t.endpoints[1].slot = 7;
        let firsts: Vec<(String, Option<usize>)> = (0..2)
            .map(|_| match ask(&mut r, Some(&t), Some("base"), 9999) {
                Outcome::Route { endpoints, slot, fail_open: true, .. } => (endpoints[0].clone(), slot),
                o => panic!("{o:?}"),
            })
            .collect();
        let mut sorted = firsts.clone();
        sorted.sort();
        assert_eq!(sorted, [("a:1".to_string(), Some(0)), ("b:1".to_string(), Some(7))], "{firsts:?}");
    }

    #[test]
    fn when_every_endpoints_metrics_fail_but_servers_answer_it_fails_open_over_them() {
        let mut a = endpoint("a:1", load(0, 0, 0.0));
        a.health = Health::Unhealthy("metrics answered HTTP 500".into());
        let mut b = endpoint("b:1", load(0, 0, 0.0));
        b.health = Health::Unhealthy("no vllm load metrics".into());
        b.models = vec!["other".into()];
        let mut c = endpoint("c:1", load(0, 0, 0.0));
        c.health = Health::Unreachable("no answer".into());
        let t = table(vec![a, b, c]);
        let mut r = router(3);
        for _ in 0..3 {
            match ask(&mut r, Some(&t), Some("base"), NOW) {
                Outcome::Route { endpoints, fail_open: true, outage: Some(why), .. } => {
                    assert_eq!(endpoints, vec!["a:1"], "the model filter holds, and an unreachable one is left out");
                    assert!(why.contains("HTTP 500"), "{why}");
                }
                o => panic!("{o:?}"),
            }
        }
        // Nothing answers: 503 with the reason.
        let mut down = endpoint("a:1", load(0, 0, 0.0));
        down.health = Health::Unreachable("no answer".into());
        assert_eq!(status(ask(&mut r, Some(&table(vec![down])), Some("base"), NOW)), 503);
    }

    #[test]
    fn explain_lists_every_score() {
        let mut r = router(2);
        r.config.explain = true;
        let t = table(vec![endpoint("a:1", load(1, 0, 0.0)), endpoint("b:1", load(0, 0, 0.0))]);
        match ask(&mut r, Some(&t), Some("base"), NOW) {
            Outcome::Route { explain: Some(text), .. } => {
                assert!(text.starts_with("b:1 "), "{text}");
                assert!(text.contains("queue-scorer=0.000x"), "{text}");
            }
            o => panic!("{o:?}"),
        }
    }

    fn configured(extra: serde_json::Value) -> Router {
        let mut doc = serde_json::json!({"endpoints": ["10.0.0.1:8000"]});
        doc.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (config, profile) = Config::parse_with_profile(doc.to_string().as_bytes()).unwrap();
        Router::new(config, profile, 1)
    }

    #[test]
    fn sheddable_requests_get_429_only_when_every_endpoint_is_saturated() {
        let mut r = configured(serde_json::json!({"objectives": {"batch": -1, "chat": 10}}));
        let busy = table(vec![endpoint("a:1", load(9, 8, 0.5)), endpoint("b:1", load(0, 8, 0.95))]);
        let ask_as = |r: &mut Router, t: &Table, objective: Option<&str>| {
            r.decide(Some(t), &Incoming { model: Some("base"), objective, ..Default::default() }, NOW, &|_| 0)
        };
        assert_eq!(status(ask_as(&mut r, &busy, Some("batch"))), 429);
        assert!(matches!(ask_as(&mut r, &busy, Some("chat")), Outcome::Route { .. }));
        assert!(matches!(ask_as(&mut r, &busy, None), Outcome::Route { .. }), "no objective: priority 0");
        assert!(matches!(ask_as(&mut r, &busy, Some("unknown")), Outcome::Route { .. }));
        let one_free = table(vec![endpoint("a:1", load(9, 8, 0.5)), endpoint("b:1", load(0, 8, 0.2))]);
        assert_eq!(route(ask_as(&mut r, &one_free, Some("batch"))), vec!["b:1"], "only where there is room");
        assert_eq!(route(ask_as(&mut r, &one_free, Some("chat")))[0], "b:1");
        // Requests sent since the scrape count: b's queue of 0 plus 5 pending saturates it.
        let pending = r.decide(
            Some(&one_free),
            &Incoming { model: Some("base"), objective: Some("batch"), ..Default::default() },
            NOW,
            &|slot| if slot == 1 { 5 } else { 0 },
        );
        assert_eq!(status(pending), 429);
    }

    #[test]
    fn subset_header_restricts_and_empty_or_foreign_lists_are_503() {
        let t = table(vec![endpoint("a:1", load(0, 0, 0.0)), endpoint("b:1", load(9, 9, 0.9))]);
        let mut r = router(2);
        let with = |r: &mut Router, subset: &str| {
            r.decide(Some(&t), &Incoming { model: Some("base"), subset: Some(subset), ..Default::default() }, NOW, &|_| 0)
        };
        assert_eq!(route(with(&mut r, " b:1 , z:9")), vec!["b:1"]);
        assert_eq!(status(with(&mut r, "")), 503);
        assert_eq!(status(with(&mut r, "z:9")), 503);
        // Failing open stays within the subset too.
        let config_addr = r.config.endpoints[1].clone();
        match r.decide(None, &Incoming { subset: Some(&config_addr), ..Default::default() }, NOW, &|_| 0) {
            Outcome::Route { endpoints, fail_open: true, .. } => assert_eq!(endpoints, vec![config_addr]),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn rewrite_picks_among_servers_of_the_target() {
        let mut r = configured(serde_json::json!({"model_rewrites": [{"model": "chat", "targets": [{"model": "small"}]}]}));
        let mut small = endpoint("a:1", load(9, 9, 0.9));
        small.models = vec!["small".into()];
        let t = table(vec![small, endpoint("b:1", load(0, 0, 0.0))]);
        match r.decide(Some(&t), &Incoming { model: Some("chat"), ..Default::default() }, NOW, &|_| 0) {
            Outcome::Route { endpoints, rewritten, .. } => {
                assert_eq!(endpoints, vec!["a:1"]);
                assert_eq!(rewritten.as_deref(), Some("small"));
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_burst_between_scrapes_spreads() {
        // Three idle endpoints, one scrape, twelve requests before the next: without
        // pending counts every request would see the same table and pick alike.
        let t = table(slotted(["a:1", "b:1", "c:1"].iter().map(|a| endpoint(a, load(0, 0, 0.0))).collect()));
        let mut r = router(3);
        let mut sent: std::collections::HashMap<String, i64> = Default::default();
        for _ in 0..12 {
            let counts = sent.clone();
            let o = r.decide(Some(&t), &Incoming { model: Some("base"), ..Default::default() }, NOW, &|slot| {
                let e = t.endpoints.iter().find(|e| e.slot as usize == slot).unwrap();
                counts.get(&e.address).copied().unwrap_or(0)
            });
            *sent.entry(route(o)[0].clone()).or_default() += 1;
        }
        assert_eq!(sent.values().copied().collect::<std::collections::BTreeSet<i64>>(), [4].into());
    }

    #[test]
    fn the_other_replicas_sends_since_the_scrape_count_like_this_ones() {
        // a was idle at the scrape and this proxy has sent it one request since; b has two
        // waiting. Alone, this proxy's a is the lighter; with two more replicas sending
        // alike, three are on their way to a.
        let pick = |replicas: u32| {
            let mut t = table(vec![endpoint("a:1", load(0, 0, 0.0)), endpoint("b:1", load(2, 2, 0.0))]);
            t.replicas = replicas;
            let o = router(2).decide(Some(&t), &Incoming { model: Some("base"), ..Default::default() }, NOW, &|slot| {
                i64::from(slot == 0)
            });
            route(o)[0].clone()
        };
        assert_eq!(pick(1), "a:1");
        assert_eq!(pick(3), "b:1");
    }
}
