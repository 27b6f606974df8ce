//! The paged KV cache with automatic prefix caching, in the manner of vLLM V1.
//!
//! A full prompt block is known by the hash of its tokens chained with the blocks before
//! it, so two prompts share blocks exactly as long as they share a prefix. A finished (or
//! preempted) sequence's prompt blocks stay cached with no reference; they count as free,
//! as vLLM's `kv_cache_usage_perc` counts them, and are evicted least recently used first
//! when a new block needs their space.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug)]
pub struct KvCache {
    num_blocks: u32,
    /// Prompt blocks by content hash.
    cached: HashMap<u64, Cached>,
    /// Cached blocks no sequence references, by (last use, hash): the eviction order.
    evictable: BTreeSet<(u64, u64)>,
    /// Referenced hashed blocks, and blocks without a hash (partial blocks, output).
    in_use_hashed: u32,
    private: u32,
    clock: u64,
}

#[derive(Debug)]
struct Cached {
    refs: u32,
    last_use: u64,
}

/// The blocks one sequence holds.
#[derive(Debug, Default)]
pub struct Holding {
    hashed: Vec<u64>,
    private: u32,
}

impl Holding {
    pub fn blocks(&self) -> u32 {
        self.hashed.len() as u32 + self.private
    }
}

impl KvCache {
    pub fn new(num_blocks: u32) -> Self {
        KvCache {
            num_blocks,
            cached: HashMap::new(),
            evictable: BTreeSet::new(),
            in_use_hashed: 0,
            private: 0,
            clock: 0,
        }
    }

    /// Blocks in use by running sequences, over all blocks (what vLLM reports).
    pub fn usage(&self) -> f64 {
        f64::from(self.in_use_hashed + self.private) / f64::from(self.num_blocks.max(1))
    }

    /// Blocks a new allocation may take: the free ones and the evictable cached ones.
    fn available(&self) -> u32 {
        self.num_blocks.saturating_sub(self.in_use_hashed + self.private)
    }

    /// How many leading blocks of a prompt are cached.
    pub fn cached_prefix(&self, hashes: &[u64]) -> usize {
        hashes.iter().take_while(|h| self.cached.contains_key(h)).count()
    }

    /// Takes `total` blocks for a prompt whose full blocks hash to `hashes`: the cached
    /// prefix is shared, the rest allocated. `None` (and nothing taken) if they do not fit.
    /// Returns the holding and the number of prompt blocks found cached.
    pub fn allocate_prompt(&mut self, hashes: &[u64], total: u32) -> Option<(Holding, usize)> {
        let hits = self.cached_prefix(hashes);
        let idle_hits = hashes[..hits].iter().filter(|h| self.cached.get(h).is_some_and(|c| c.refs == 0)).count();
        let fresh = total.saturating_sub(hits as u32);
        if fresh + idle_hits as u32 > self.available() {
            return None;
        }
        let hashed: Vec<u64> = hashes.iter().take(total as usize).copied().collect();
        for &h in &hashed {
            self.reference(h);
        }
        let private = total - hashed.len() as u32;
        for _ in 0..private {
            self.make_room();
            self.private += 1;
        }
        Some((Holding { hashed, private }, hits))
    }

    /// One more block for a growing sequence; false if the cache is full of live blocks.
    pub fn grow(&mut self, holding: &mut Holding) -> bool {
        if self.available() == 0 {
            return false;
        }
        self.make_room();
        self.private += 1;
        holding.private += 1;
        true
    }

    /// Gives a sequence's blocks back; its prompt blocks stay cached until evicted.
    pub fn release(&mut self, holding: Holding) {
        self.clock += 1;
        self.private -= holding.private;
        for h in holding.hashed {
            if let Some(c) = self.cached.get_mut(&h) {
                c.refs -= 1;
                if c.refs == 0 {
                    self.in_use_hashed -= 1;
                    c.last_use = self.clock;
                    self.evictable.insert((self.clock, h));
                }
            }
        }
    }

    /// Gives a finished sequence's blocks back, and caches the blocks its answer filled
    /// (`answer`: their hashes, chained after the prompt's), as vLLM V1 does: a later
    /// prompt that repeats the prompt and the answer finds both.
    pub fn release_answered(&mut self, mut holding: Holding, answer: &[u64]) {
        self.clock += 1;
        for &h in answer.iter().take(holding.private as usize) {
            holding.private -= 1;
            self.private -= 1;
            if !self.cached.contains_key(&h) {
                self.cached.insert(h, Cached { refs: 0, last_use: self.clock });
                self.evictable.insert((self.clock, h));
            }
        }
        // The prompt's blocks are released after (a later clock): the answer's, the
        // chain's tail, are evicted first, as vLLM frees a request's blocks tail first.
        self.release(holding);
    }

    fn reference(&mut self, h: u64) {
        if let Some(c) = self.cached.get_mut(&h) {
            if c.refs == 0 {
                self.evictable.remove(&(c.last_use, h));
                self.in_use_hashed += 1;
            }
            c.refs += 1;
            return;
        }
        self.make_room();
        self.cached.insert(h, Cached { refs: 1, last_use: 0 });
        self.in_use_hashed += 1;
    }

    /// Evicts the least recently used idle block if every block is occupied.
    fn make_room(&mut self) {
        let occupied = self.in_use_hashed + self.private + self.evictable.len() as u32;
        if occupied >= self.num_blocks {
            if let Some((_, h)) = self.evictable.pop_first() {
                self.cached.remove(&h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefix_is_reused_after_release() {
        let mut kv = KvCache::new(10);
        let (a, hits) = kv.allocate_prompt(&[1, 2, 3], 4).unwrap();
        assert_eq!(hits, 0);
        assert_eq!(kv.usage(), 0.4);
        kv.release(a);
        assert_eq!(kv.usage(), 0.0, "idle cached blocks count as free");
        let (b, hits) = kv.allocate_prompt(&[1, 2, 9], 4).unwrap();
        assert_eq!(hits, 2, "the first two blocks match, the third differs");
        assert_eq!(b.blocks(), 4);
    }

    #[test]
    fn an_answers_full_blocks_are_cached_after_its_prompts() {
        let mut kv = KvCache::new(10);
        // Two full prompt blocks and a partial one, then a block the answer grew.
        let (mut a, _) = kv.allocate_prompt(&[1, 2], 3).unwrap();
        assert!(kv.grow(&mut a));
        kv.release_answered(a, &[3, 4]);
        assert_eq!(kv.usage(), 0.0, "the answer's blocks are idle, so free");
        assert_eq!(kv.cached_prefix(&[1, 2, 3, 4, 5]), 4);
        // The answer's blocks, the chain's tail, are evicted before the prompt's.
        let (b, _) = kv.allocate_prompt(&[7, 8, 9, 10, 11, 12, 13, 14], 8).unwrap();
        assert_eq!(kv.cached_prefix(&[1, 2, 3, 4]), 2);
        kv.release(b);
    }

    #[test]
    fn least_recently_used_idle_blocks_are_evicted_first() {
        let mut kv = KvCache::new(4);
        let (a, _) = kv.allocate_prompt(&[1, 2], 2).unwrap();
        kv.release(a);
        let (b, _) = kv.allocate_prompt(&[7, 8], 2).unwrap();
        kv.release(b);
        // Two new blocks: the oldest idle ones (1, 2) go, 7 and 8 stay.
        let (c, _) = kv.allocate_prompt(&[5, 6], 2).unwrap();
        assert_eq!(kv.cached_prefix(&[1]), 0);
        assert_eq!(kv.cached_prefix(&[7, 8]), 2);
        kv.release(c);
    }

    #[test]
    fn live_blocks_are_never_evicted() {
        let mut kv = KvCache::new(3);
        let (mut a, _) = kv.allocate_prompt(&[1, 2], 3).unwrap();
        assert!(kv.allocate_prompt(&[4], 1).is_none());
        assert!(!kv.grow(&mut a));
        assert_eq!(kv.cached_prefix(&[1, 2]), 2);
        kv.release(a);
        assert!(kv.allocate_prompt(&[4], 1).is_some());
    }
}
