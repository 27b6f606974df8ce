use serde::Deserialize;

use crate::affinity;
use crate::prefix::{self, PrefixIndex};
use crate::scheduler::{Candidate, Scorer, SchedulingRequest};

/// Prefix-cache affinity: the share of the prompt's leading blocks an endpoint was sent
/// before (GIE's prefix-cache scorer), so requests that share a long context go where its
/// KV cache already is.
///
/// Each picker VM learns only from its own decisions, and a fleet has many (a VM per
/// Envoy worker, several Envoy replicas). So that they agree, a prefix's *anchor* (one of
/// its block hashes) gives it one *placement* endpoint, scoring `placement` (unless the
/// recorded share is higher):
/// - the endpoint this proxy's workers assigned it to (`affinity`, in shared data), or
/// - if none yet, its *home*: the first of the candidates ranked by rendezvous hashing of
///   the anchor, the same in every VM of every proxy, without talking.
///
/// Load scorers still move requests off it when it is busy. (Measured and dropped:
/// scoring the next endpoints in the rendezvous order too; following the latest endpoint
/// instead of the first; a weaker home score for prefixes seen once: BENCHMARKS.md.)
pub struct PrefixCacheScorer {
    params: Params,
    index: PrefixIndex,
    /// The hashes and anchor of the request being scheduled, kept for `picked`.
    hashes: Vec<u64>,
    anchor: Option<u64>,
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
    /// Which block (1-based, or the last if the prompt is shorter) names the home: deep
    /// enough to tell groups apart, shallow enough that their requests share it.
    #[serde(default = "defaults::placement_block")]
    pub placement_block: usize,
}

mod defaults {
    pub fn hash_block_size() -> usize {
        64
    }
    pub fn max_prefix_blocks() -> usize {
        256
    }
    pub fn lru_capacity() -> usize {
        31_250
    }
    pub fn placement_block() -> usize {
        8
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
        if self.placement_block == 0 {
            return Err("placementBlock must be at least 1".into());
        }
        Ok(())
    }
}

impl PrefixCacheScorer {
    pub fn new(params: Params) -> Self {
        PrefixCacheScorer { params, index: PrefixIndex::default(), hashes: Vec::new(), anchor: None }
    }

    /// Blocks an endpoint can hold: its KV cache in tokens, at ~4 bytes a token, when the
    /// metrics tell; the configured default otherwise.
    fn capacity(&self, c: &Candidate) -> usize {
        let m = &c.metrics;
        let tokens = u64::from(m.block_size) * u64::from(m.num_blocks);
        if tokens == 0 {
            return self.params.lru_capacity_per_server;
        }
        ((tokens * 4) / self.params.hash_block_size as u64).clamp(1, 1 << 22) as usize
    }
}

impl Scorer for PrefixCacheScorer {
    fn name(&self) -> &'static str {
        "prefix-cache-scorer"
    }

    fn prompt_bytes(&self) -> usize {
        self.params.hash_block_size.saturating_mul(self.params.max_prefix_blocks_to_match)
    }

    fn score(&mut self, request: &SchedulingRequest, candidates: &[Candidate], out: &mut Vec<f64>) {
        let p = &self.params;
        self.hashes = prefix::block_hashes(
            request.model.unwrap_or_default(),
            request.prompt,
            p.hash_block_size,
            p.max_prefix_blocks_to_match,
        );
        let n = self.hashes.len();
        self.anchor = None;
        if n == 0 {
            out.extend(candidates.iter().map(|_| 0.0));
            return;
        }
        let start = out.len();
        out.extend(candidates.iter().map(|c| self.index.matched(&c.address, &self.hashes) as f64 / n as f64));
        if p.placement == 0.0 {
            return; // GIE's scorer: what this VM recorded, nothing more
        }
        let anchor = self.hashes[p.placement_block.min(n) - 1];
        self.anchor = Some(anchor);
        let assigned = request.shared.and_then(|s| affinity::recall(s, anchor));
        let placed = match assigned {
            Some(id) => candidates.iter().position(|c| affinity::endpoint_id(&c.address) == id),
            None => prefix::placement(anchor, candidates.iter().map(|c| c.address.as_str())).first().copied(),
        };
        if let Some(i) = placed {
            let s = &mut out[start + i];
            *s = s.max(p.placement);
        }
    }

    fn picked(&mut self, request: &SchedulingRequest, chosen: &Candidate) {
        let capacity = self.capacity(chosen);
        self.index.record(&chosen.address, &self.hashes, capacity);
        if let (Some(anchor), Some(store)) = (self.anchor, request.shared) {
            affinity::assign(store, anchor, affinity::endpoint_id(&chosen.address));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testing::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn scorer(placement: f64) -> PrefixCacheScorer {
        let params: Params = serde_json::from_value(serde_json::json!({"placement": placement})).unwrap();
        PrefixCacheScorer::new(params)
    }

    fn request(prompt: &[u8]) -> SchedulingRequest<'_> {
        SchedulingRequest { model: Some("m"), prompt, ..Default::default() }
    }

    #[test]
    fn scores_the_share_of_blocks_sent_before() {
        let eps = [endpoint("a:1", load(0, 0, 0.0)), endpoint("b:1", load(0, 0, 0.0))];
        let view = candidates(&eps);
        let mut s = scorer(0.0);
        let context = vec![b'c'; 64 * 6];
        let mut out = vec![];
        s.score(&request(&context), &view, &mut out);
        assert_eq!(out, vec![0.0, 0.0], "nothing recorded, no placement: GIE's zeros");
        s.picked(&request(&context), &view[1]);
        // Same six blocks and two more of a new question.
        let mut longer = context.clone();
        longer.extend([b'q'; 128]);
        out.clear();
        s.score(&request(&longer), &view, &mut out);
        assert_eq!(out, vec![0.0, 0.75]);
    }

    #[test]
    fn placement_agrees_across_independent_scorers() {
        let eps: Vec<_> = (1..=8).map(|i| endpoint(&format!("10.0.0.{i}:8000"), load(0, 0, 0.0))).collect();
        let view = candidates(&eps);
        let homes: Vec<usize> = (0..2)
            .map(|_| {
                let mut s = scorer(0.5);
                let mut out = vec![];
                s.score(&request(&[b'z'; 1024]), &view, &mut out);
                assert_eq!(out.iter().filter(|&&x| x == 0.5).count(), 1, "{out:?}");
                out.iter().position(|&x| x == 0.5).unwrap()
            })
            .collect();
        assert_eq!(homes[0], homes[1]);
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
}
