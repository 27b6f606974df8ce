use serde::Deserialize;

use crate::prefix_record;
use crate::prefix::{self, Match, PrefixIndex};
use crate::rendezvous;
use crate::scheduler::{Candidate, Scorer, SchedulingRequest};

/// The weight of a recorded share on an endpoint other than the prefix's assignment.
const OTHER_THAN_ASSIGNED: f64 = 0.9;

/// The share of the prompt's leading blocks an endpoint was sent
/// before (GIE's prefix-cache scorer), so requests that share a long context go where its
/// KV cache already is.
///
/// Each picker VM learns only from its own decisions, and a fleet has many (a VM per
/// Envoy worker, several Envoy replicas). So that they agree, a prefix's *anchor* (one of
/// its block hashes) gives it one *placement* endpoint, scoring `placement` (unless the
/// recorded share is higher):
/// - the endpoint this proxy's workers first sent it to (the prefix record, in shared
///   data), or
/// - if none yet, its *home*: the first of the candidates ranked by rendezvous hashing of
///   the anchor, the same in every VM of every proxy, without talking. At first sight the
///   home scores in proportion to the prompt's length (full from `fullPlacementBlocks`):
///   long prompts are the costly ones to misplace and the likely shared contexts, while
///   short one-off prompts stay spread by load.
///
/// Load scorers still move requests off it when it is busy. (The alternatives tried, with
/// the figures that decided them, are in docs/experiments.md.)
pub struct PrefixCacheScorer {
    params: Params,
    index: PrefixIndex,
    /// The hashes of the request being scheduled, and its anchor if the proxy has no
    /// assignment for it yet, kept for `picked`.
    hashes: Vec<u64>,
    anchor: Option<u64>,
    /// Each candidate's `prefix_record::endpoint_id`, and what the index held of the
    /// prompt for it, kept for `picked`.
    matches: Vec<(u32, Match)>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Prompt bytes per block (GIE: 64, about 16 tokens).
    #[serde(default = "defaults::hash_block_size")]
    pub hash_block_size: usize,
    /// Blocks looked at, at most (GIE: 256); the rest of the prompt is not hashed.
    #[serde(default = "defaults::max_prefix_blocks")]
    pub max_prefix_blocks_to_match: usize,
    /// Blocks remembered per endpoint when its metrics do not give its KV-cache size.
    #[serde(default = "defaults::lru_capacity")]
    pub lru_capacity_per_server: usize,
    /// The home's score for a prefix no one recorded; 0 turns placement off (GIE's behaviour).
    #[serde(default)]
    pub placement: f64,
    /// A prompt seen for the first time gets the home's full `placement` from this many
    /// blocks on, and proportionally less below: one-off short prompts stay spread by load.
    #[serde(default = "defaults::full_placement_blocks")]
    pub full_placement_blocks: usize,
    /// Which block (1-based) names the home: deep enough to tell groups apart, shallow
    /// enough that their requests share it. No later than the last block of a chat's
    /// first user message, so every turn of a conversation has the same one, or the
    /// prompt's last.
    #[serde(default = "defaults::placement_block")]
    pub placement_block: usize,
    /// How many endpoints of the rendezvous order a new prefix may start on: the one of
    /// them this proxy has given the fewest prefixes wins (1: always the first). Even
    /// homes keep every server's contexts within its cache; but Envoy replicas count
    /// apart and then disagree, so more than 1 suits one Envoy (BENCHMARKS.md).
    #[serde(default = "defaults::placement_choices")]
    pub placement_choices: usize,
    /// The first endpoint stays home unless it has more than this many more prefixes than
    /// the least given one: small differences do not move homes.
    #[serde(default = "defaults::placement_margin")]
    pub placement_margin: u32,
    /// The prefix index's memory, at most, in bytes per VM: every endpoint gets an equal
    /// share, however large a KV cache its metrics report (outside data must not size
    /// the proxy's memory).
    #[serde(default = "defaults::max_index_bytes")]
    pub max_index_bytes: usize,
}

/// What one remembered block costs in the index, at worst (a u64 in a hash set between
/// two growths, with its control byte).
pub const BYTES_PER_BLOCK: usize = 24;

mod defaults {
    pub fn hash_block_size() -> usize {
        64
    }
    pub fn max_prefix_blocks() -> usize {
        256
    }
    pub fn max_index_bytes() -> usize {
        16 << 20
    }
    pub fn lru_capacity() -> usize {
        31_250
    }
    pub fn placement_block() -> usize {
        8
    }
    pub fn full_placement_blocks() -> usize {
        256
    }
    pub fn placement_choices() -> usize {
        1
    }
    pub fn placement_margin() -> u32 {
        1
    }

}

impl Params {
    pub fn validate(&self) -> Result<(), String> {
        if self.hash_block_size == 0 || self.max_prefix_blocks_to_match == 0 || self.lru_capacity_per_server == 0 {
            return Err("hashBlockSize, maxPrefixBlocksToMatch and lruCapacityPerServer must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.placement) {
            return Err("placement must be within [0, 1]".into());
        }
        if self.placement_block == 0 || self.full_placement_blocks == 0 || self.placement_choices == 0 {
            return Err("placementBlock, fullPlacementBlocks and placementChoices must be at least 1".into());
        }
        Ok(())
    }
}

impl PrefixCacheScorer {
    pub fn new(params: Params) -> Self {
        PrefixCacheScorer { params, index: PrefixIndex::default(), hashes: Vec::new(), anchor: None, matches: Vec::new() }
    }

    /// Blocks an endpoint can hold: its KV cache in tokens, at ~4 bytes a token, when the
    /// metrics tell; the configured default otherwise.
    fn capacity(&self, c: &Candidate) -> usize {
        let m = &c.metrics;
        let tokens = u64::from(m.block_size) * u64::from(m.num_blocks);
        let wanted = if tokens == 0 {
            self.params.lru_capacity_per_server as u64
        } else {
            (tokens * 4) / self.params.hash_block_size as u64
        };
        let share = self.params.max_index_bytes / BYTES_PER_BLOCK / self.index.endpoints().max(1);
        wanted.clamp(1, share.max(1) as u64) as usize
    }
}

/// Of the first `placement_choices` endpoints in `rank`, the one given the fewest
/// prefixes (`given`: endpoint id → count), if the first has more than the margin over it.
/// (`matches[i].0` is candidate `i`'s endpoint id.)
fn least_given(rank: &[usize], matches: &[(u32, Match)], given: &[(u32, u32)], p: &Params) -> Option<usize> {
    let count = |i: usize| {
        let id = matches[i].0;
        given.iter().find(|(e, _)| *e == id).map_or(0, |&(_, n)| n)
    };
    let first = *rank.first()?;
    let least = rank.iter().take(p.placement_choices).copied().min_by_key(|&i| (count(i), i != first))?;
    Some(if count(first) > count(least).saturating_add(p.placement_margin) { least } else { first })
}

impl PrefixCacheScorer {
    /// The type name configurations use.
    pub const TYPE: &'static str = "prefix-cache-scorer";
}

impl Scorer for PrefixCacheScorer {
    fn name(&self) -> &'static str {
        Self::TYPE
    }

    fn prompt_bytes(&self) -> usize {
        self.params.hash_block_size.saturating_mul(self.params.max_prefix_blocks_to_match)
    }

    fn score(&mut self, request: &SchedulingRequest, candidates: &[Candidate], scores: &mut [f64]) {
        let p = &self.params;
        let seed = prefix::model_seed(request.model.unwrap_or_default());
        prefix::block_hashes_into(
            &mut self.hashes,
            seed,
            request.prompt.bytes,
            p.hash_block_size,
            p.max_prefix_blocks_to_match,
        );
        let n = self.hashes.len();
        self.anchor = None;
        self.matches.clear();
        if n == 0 {
            return;
        }
        for (s, c) in scores.iter_mut().zip(candidates) {
            let id = c.id();
            let found = self.index.matched(id, &self.hashes);
            self.matches.push((id, found));
            *s = found.blocks as f64 / n as f64;
        }
        if p.placement == 0.0 {
            return; // GIE's scorer: what this VM recorded, nothing more
        }
        // A conversation keeps its anchor from turn to turn: a block within its first user
        // message, which every turn repeats (the end of the prompt does not stay).
        let within = p.placement_block.saturating_mul(p.hash_block_size);
        let stable = request.prompt.first_user_end
            .filter(|&end| end <= within)
            .map_or(p.placement_block, |end| (end / p.hash_block_size).max(1));
        let anchor = prefix::anchor(seed, request.prompt.bytes, p.hash_block_size, p.placement_block.min(stable).min(n));
        let recorded_here = scores.iter().any(|&share| share > 0.0);
        let assigned = request.store.and_then(|s| prefix_record::recall(s, anchor));
        // Only an anchor without an assignment needs one when the pick is made.
        self.anchor = assigned.is_none().then_some(anchor);
        let (placed, strength) = match assigned {
            Some(id) => (self.matches.iter().position(|&(e, _)| e == id), p.placement),
            None => {
                let rank = rendezvous::rank(anchor, candidates.iter().map(|c| c.address.as_str()));
                let home = match request.store {
                    Some(store) if p.placement_choices > 1 => {
                        least_given(&rank, &self.matches, &prefix_record::prefixes_given(store), p)
                    }
                    _ => rank.first().copied(),
                };
                // First sight: the longer the prompt, the more a wrong place would cost, and
                // the likelier it is a shared context (a document, a long system prompt).
                let first_sight = p.placement * (n as f64 / p.full_placement_blocks as f64).min(1.0);
                (home, if recorded_here { p.placement } else { first_sight })
            }
        };
        if let Some(i) = placed {
            if assigned.is_some() {
                // Where this VM sent the prefix before counts a little less than where the
                // proxy (and its peers) agreed it lives: after replicas settle a prefix
                // they had placed apart, both follow the agreement.
                for (j, share) in scores.iter_mut().enumerate() {
                    if j != i {
                        *share *= OTHER_THAN_ASSIGNED;
                    }
                }
            }
            if let Some(s) = scores.get_mut(i) {
                *s = s.max(strength);
            }
        }
    }

    fn picked(&mut self, request: &SchedulingRequest, chosen: &Candidate) {
        let capacity = self.capacity(chosen);
        let id = chosen.id();
        let found = self.matches.iter().find(|&&(e, _)| e == id).map_or(Match::default(), |&(_, m)| m);
        self.index.record(id, &self.hashes, found, capacity);
        if let (Some(anchor), Some(store)) = (self.anchor, request.store) {
            let count = self.params.placement_choices > 1;
            prefix_record::assign(store, anchor, id, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::*;
    use crate::request::Prompt;
    use crate::test;

    fn scorer(placement: f64) -> PrefixCacheScorer {
        let params: Params = serde_json::from_value(serde_json::json!({"placement": placement})).unwrap();
        PrefixCacheScorer::new(params)
    }

    fn request(prompt: &[u8]) -> SchedulingRequest<'_> {
        SchedulingRequest { model: Some("m"), prompt: Prompt::of(prompt), ..Default::default() }
    }

    #[test]
    fn scores_the_share_of_blocks_sent_before() {
        let eps = [endpoint("a:1", load(0, 0, 0.0)), endpoint("b:1", load(0, 0, 0.0))];
        let view = candidates(&eps);
        let mut s = scorer(0.0);
        let context = vec![b'c'; 64 * 6];
        let mut out = scored(&mut s, &request(&context), &view);
        assert_eq!(out, vec![0.0, 0.0], "nothing recorded, no placement: GIE's zeros");
        s.picked(&request(&context), &view[1]);
        // Same six blocks and two more of a new question.
        let mut longer = context.clone();
        longer.extend([b'q'; 128]);
        out = scored(&mut s, &request(&longer), &view);
        assert_eq!(out, vec![0.0, 0.75]);
    }

    #[test]
    fn first_sight_places_long_prompts_home_and_short_ones_lightly() {
        let eps: Vec<_> = (1..=8).map(|i| endpoint(&format!("10.0.0.{i}:8000"), load(0, 0, 0.0))).collect();
        let view = candidates(&eps);
        let long = vec![b'z'; 64 * 256];
        let homes: Vec<usize> = (0..2)
            .map(|_| {
                let out = scored(&mut scorer(0.5), &request(&long), &view);
                assert_eq!(out.iter().filter(|&&x| x == 0.5).count(), 1, "{out:?}");
                out.iter().position(|&x| x == 0.5).unwrap()
            })
            .collect();
        assert_eq!(homes[0], homes[1], "independent VMs agree on the home");
        let out = scored(&mut scorer(0.5), &request(&long[..64 * 64]), &view);
        let top = out.iter().copied().fold(0.0, f64::max);
        assert_eq!(top, 0.5 * 64.0 / 256.0, "64 blocks of 256: a quarter of the placement");
    }

    #[test]
    fn the_proxys_assignment_is_shared_by_its_workers() {
        let eps: Vec<_> = (1..=8).map(|i| endpoint(&format!("10.0.0.{i}:8000"), load(0, 0, 0.0))).collect();
        let view = candidates(&eps);
        let prompt = vec![b'q'; 64 * 256];
        let store = crate::store::MemoryStore::default();
        let req = SchedulingRequest { model: Some("m"), prompt: Prompt::of(&prompt), store: Some(&store), ..Default::default() };
        let mut first = scorer(0.5);
        let mut out = scored(&mut first, &req, &view);
        let home = out.iter().position(|&x| x == 0.5).unwrap();
        let elsewhere = (home + 1) % 8;
        first.picked(&req, &view[elsewhere]); // load sent it away from home
        // Another worker of the proxy: nothing recorded itself, follows the assignment.
        out = scored(&mut scorer(0.5), &req, &view);
        assert_eq!(out[elsewhere], 0.5, "{out:?}");
        assert_eq!(out[home], 0.0, "{out:?}");
    }

    #[test]
    fn a_conversations_next_turn_follows_where_its_first_went() {
        let eps: Vec<_> = (1..=8).map(|i| endpoint(&format!("10.0.0.{i}:8000"), load(0, 0, 0.0))).collect();
        let view = candidates(&eps);
        // Bodies as a client sends them (keys sorted: `content` before `role`), read by
        // the request parser's one scan.
        let turns = |n: usize| -> Vec<u8> {
            let mut messages = vec![serde_json::json!({"role": "system", "content": "be brief"})];
            for i in 0..n {
                messages.push(serde_json::json!({"role": "user", "content": format!("question {i}: what about the {i} rivers?")}));
                messages.push(serde_json::json!({"role": "assistant", "content": "an answer ".repeat(60)}));
            }
            messages.pop();
            serde_json::to_vec(&serde_json::json!({"model": "m", "messages": messages})).unwrap()
        };
        let (first, third) = (turns(1), turns(2));
        let read = |body| crate::request::parse("/v1/chat/completions", body, 64 * 256).unwrap().prompt;
        let (first, third) = (read(&first), read(&third));
        assert!(first.bytes.len() < 64 * 8 && third.bytes.len() > 64 * 8, "the first turn ends before the 8th block");
        assert!(first.first_user_end.is_some() && first.first_user_end == third.first_user_end);
        let store = crate::store::MemoryStore::default();
        let request = |prompt| SchedulingRequest { model: Some("m"), prompt, store: Some(&store), ..Default::default() };
        let mut one = scorer(1.0);
        scored(&mut one, &request(first), &view);
        one.picked(&request(first), &view[6]); // load sent it to 6
        // The next turn, on another worker: nothing recorded there, but the conversation's
        // anchor (in its first user message) is the same, and so is its assignment.
        let out = scored(&mut scorer(1.0), &request(third), &view);
        assert_eq!(out[6], 1.0, "{out:?}");
        assert_eq!(out.iter().filter(|&&x| x > 0.0).count(), 1, "{out:?}");
    }

    #[test]
    fn the_assignment_outranks_where_this_vm_sent_the_prefix() {
        let eps: Vec<_> = (1..=8).map(|i| endpoint(&format!("10.0.0.{i}:8000"), load(0, 0, 0.0))).collect();
        let view = candidates(&eps);
        let prompt = vec![b'p'; 64 * 256];
        let request = |store| SchedulingRequest { model: Some("m"), prompt: Prompt::of(&prompt), store: Some(store), ..Default::default() };
        let mut vm = scorer(1.0);
        let before = crate::store::MemoryStore::default();
        scored(&mut vm, &request(&before), &view);
        vm.picked(&request(&before), &view[2]); // this VM sent it to 2
        // The proxy's record (say, settled with a peer's) puts the prefix on 5.
        let settled = crate::store::MemoryStore::default();
        prefix_record::assign(&settled, prefix::anchor(prefix::model_seed("m"), &prompt, 64, 8), prefix_record::endpoint_id(&view[5].address), false);
        let out = scored(&mut vm, &request(&settled), &view);
        assert_eq!(out[5], 1.0, "{out:?}");
        assert_eq!(out[2], OTHER_THAN_ASSIGNED, "still a full hit there, but second: {out:?}");
    }

    #[test]
    fn with_choices_a_new_prefix_starts_where_fewest_were_given() {
        let eps: Vec<_> = (1..=8).map(|i| endpoint(&format!("10.0.0.{i}:8000"), load(0, 0, 0.0))).collect();
        let view = candidates(&eps);
        let params = |choices: usize| -> Params {
            serde_json::from_value(serde_json::json!({"placement": 1.0, "placementChoices": choices})).unwrap()
        };
        let home_of = |s: &mut PrefixCacheScorer, store: &crate::store::MemoryStore, prompt: &[u8]| {
            let req = SchedulingRequest { model: Some("m"), prompt: Prompt::of(prompt), store: Some(store), ..Default::default() };
            let out = scored(s, &req, &view);
            let home = out.iter().position(|&x| x == 1.0).unwrap();
            s.picked(&req, &view[home]);
            home
        };
        // Prefixes one after another, each placed and sent home: with two choices no
        // endpoint gets more than one over another's count among its pair, so the spread
        // is tighter than rendezvous alone gives (6 against 8 homes here).
        let spread_of = |choices: usize, store: &crate::store::MemoryStore| {
            let mut scorer = PrefixCacheScorer::new(params(choices));
            let mut counts = [0usize; 8];
            for g in 0..96u32 {
                let prompt: Vec<u8> = g.to_le_bytes().iter().copied().cycle().take(64 * 256).collect();
                counts[home_of(&mut scorer, store, &prompt)] += 1;
            }
            counts.iter().max().unwrap() - counts.iter().min().unwrap()
        };
        let store = crate::store::MemoryStore::default();
        let (alone, balanced) = (spread_of(1, &crate::store::MemoryStore::default()), spread_of(2, &store));
        assert!(balanced < alone, "spread of homes: {balanced} with two choices, {alone} with one");
        assert_eq!(prefix_record::prefixes_given(&store).iter().map(|&(_, n)| n).sum::<u32>(), 96);
        // One choice: always the rendezvous home, and nothing counted.
        let plain_store = crate::store::MemoryStore::default();
        let req = SchedulingRequest { model: Some("m"), prompt: Prompt::of(&[b'z'; 64 * 256]), store: Some(&plain_store), ..Default::default() };
        let mut plain = PrefixCacheScorer::new(params(1));
        let out = scored(&mut plain, &req, &view);
        let rank = rendezvous::rank(prefix::anchor(prefix::model_seed("m"), &[b'z'; 64 * 256], 64, 8), view.iter().map(|c| c.address.as_str()));
        assert_eq!(out[rank[0]], 1.0);
        plain.picked(&req, &view[rank[0]]);
        assert!(prefix_record::prefixes_given(&plain_store).is_empty());
    }

    #[test]
    fn capacity_follows_the_servers_kv_cache() {
        let mut e = endpoint("a:1", load(0, 0, 0.0));
        e.metrics.block_size = 16;
        e.metrics.num_blocks = 1000;
        let s = scorer(0.0);
        assert_eq!(s.capacity(&Candidate::new(&e)), 1000);
        e.metrics.num_blocks = 0;
        assert_eq!(s.capacity(&Candidate::new(&e)), 31_250);
    }

    #[test]
    fn a_servers_numbers_do_not_size_the_proxys_memory() {
        let mut e = endpoint("a:1", load(0, 0, 0.0));
        e.metrics.block_size = 16;
        e.metrics.num_blocks = 4_000_000_000;
        let mut s = scorer(0.0);
        let share = defaults::max_index_bytes() / BYTES_PER_BLOCK;
        assert_eq!(s.capacity(&Candidate::new(&e)), share, "the whole budget, for the only endpoint");
        for i in 0..4 {
            s.index.record(prefix_record::endpoint_id(&format!("b:{i}")), &[1], Match::default(), 10);
        }
        assert_eq!(s.capacity(&Candidate::new(&e)), share / 4, "shared by the endpoints it remembers");
    }
}
