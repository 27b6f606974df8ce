//! Approximate prefix-cache state, as GIE's prefix plugin keeps it: the prompt cut into
//! fixed blocks of bytes (GIE: 16 tokens × 4 characters), a hash chained from block to
//! block and seeded with the model name, and per endpoint a bounded set of the block
//! hashes it was sent, least recently used forgotten first.

use core::hash::{BuildHasherDefault, Hasher};

use hashbrown::{HashMap, HashSet};
use twox_hash::XxHash64;

/// A fixed seed: every VM of every proxy running this module computes the same hashes, so
/// their indexes agree.
const BLOCK_SEED: u64 = 0x5eed_b10c;

/// The chained hashes of the first `max_blocks` full blocks of `prompt`. A partial last
/// block is left out: the server cannot have cached it as a block either.
///
/// XXH64, each block seeded with the hash before it: it needs only 64-bit multiplies,
/// which wasm32 has; a hash built on 128-bit products pays for their emulation there.
pub fn block_hashes(model: &str, prompt: &[u8], block_bytes: usize, max_blocks: usize) -> Vec<u64> {
    let mut hashes = Vec::new();
    block_hashes_into(&mut hashes, model, prompt, block_bytes, max_blocks);
    hashes
}

/// `block_hashes` into `hashes` (cleared first): a scorer keeps one buffer for every
/// request.
pub fn block_hashes_into(hashes: &mut Vec<u64>, model: &str, prompt: &[u8], block_bytes: usize, max_blocks: usize) {
    hashes.clear();
    let seed = XxHash64::oneshot(BLOCK_SEED, model.as_bytes());
    if block_bytes == 64 {
        // GIE's block size, the default: blocks of a length known when compiling hash in
        // straight-line code, the same values for a third fewer instructions.
        return chained(hashes, seed, prompt.as_chunks::<64>().0.iter().take(max_blocks));
    }
    chained(hashes, seed, prompt.chunks_exact(block_bytes.max(1)).take(max_blocks));
}

fn chained<B: AsRef<[u8]>>(hashes: &mut Vec<u64>, mut previous: u64, blocks: impl Iterator<Item = B>) {
    hashes.extend(blocks.map(|block| {
        previous = XxHash64::oneshot(previous, block.as_ref());
        previous
    }));
}

/// Block hashes are already uniform: a set of them need not hash them again (on wasm32
/// every 64-bit multiply of a general hasher is emulated).
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; anything else still gets a usable value.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, h: u64) {
        self.0 = h;
    }
}

type BlockSet = HashSet<u64, BuildHasherDefault<Identity>>;

/// The block hashes one endpoint was sent, at most about `capacity`, least recently used
/// forgotten first. Two generations approximate LRU in O(1): hits move to the current
/// one; when it fills, the previous generation is dropped.
#[derive(Debug, Default)]
struct Recent {
    current: BlockSet,
    previous: BlockSet,
}

impl Recent {
    fn contains(&self, h: &u64) -> bool {
        self.current.contains(h) || self.previous.contains(h)
    }

    fn insert(&mut self, h: u64, capacity: usize) {
        if self.current.insert(h) {
            self.previous.remove(&h);
            if self.current.len() >= capacity.div_ceil(2).max(1) {
                // The dropped generation's table, emptied, holds the next one: a
                // generation grows to its size once, not again after every turn (its
                // rehashes were a tenth of a 16 KB decision's cost).
                std::mem::swap(&mut self.previous, &mut self.current);
                self.current.clear();
            }
        }
    }
}

/// What `PrefixIndex::matched` found for one endpoint.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Match {
    /// Leading blocks it was sent (up to the first miss).
    pub blocks: usize,
    /// Of those, the leading ones in its current generation: recording the prompt there
    /// next need not touch them again.
    pub current: usize,
}

#[derive(Debug, Default)]
pub struct PrefixIndex {
    /// Each endpoint's blocks, and when it was last sent one (a count of records).
    endpoints: HashMap<String, (Recent, u64)>,
    records: u64,
}

/// Endpoints the index remembers at most: pods come and go, and one that left must not
/// keep its blocks forever. Past it, the one sent nothing for longest is forgotten.
pub const MAX_ENDPOINTS: usize = 1024;

impl PrefixIndex {
    /// How many leading blocks of `hashes` were sent to `address` (stops at the first miss).
    pub fn matched(&self, address: &str, hashes: &[u64]) -> Match {
        let Some((r, _)) = self.endpoints.get(address) else { return Match::default() };
        let current = hashes.iter().take_while(|&h| r.current.contains(h)).count();
        let older = hashes[current..].iter().take_while(|h| r.contains(h)).count();
        Match { blocks: current + older, current }
    }

    /// Endpoints with blocks remembered.
    pub fn endpoints(&self) -> usize {
        self.endpoints.len()
    }

    /// `address` was sent a prompt with these blocks; it keeps about `capacity` of them.
    /// `matched` is what `matched` found for it since the index last changed: the blocks
    /// already in its current generation are left as they are (the decision's own lookups
    /// told where they are, and inserting them again would change nothing).
    pub fn record(&mut self, address: &str, hashes: &[u64], matched: Match, capacity: usize) {
        self.records += 1;
        if !self.endpoints.contains_key(address) {
            if self.endpoints.len() >= MAX_ENDPOINTS {
                let oldest = self.endpoints.iter().min_by_key(|(_, (_, at))| *at).map(|(a, _)| a.clone());
                if let Some(a) = oldest {
                    self.endpoints.remove(&a);
                }
            }
            self.endpoints.insert(address.to_string(), (Recent::default(), 0));
        }
        let records = self.records;
        if let Some((r, at)) = self.endpoints.get_mut(address) {
            *at = records;
            for &h in hashes.get(matched.current..).unwrap_or_default() {
                r.insert(h, capacity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn chained_and_seeded_by_model() {
        let a = block_hashes("m", &[b'x'; 200], 64, 256);
        assert_eq!(a.len(), 3, "three full blocks of 64 bytes; the partial fourth is left out");
        let mut text = vec![b'x'; 200];
        text[70] = b'y';
        let b = block_hashes("m", &text, 64, 256);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        assert_ne!(a[2], b[2], "a change carries on down the chain");
        assert_ne!(block_hashes("n", &[b'x'; 64], 64, 256), a[..1]);
        assert_eq!(block_hashes("m", &[b'x'; 10_000], 64, 8).len(), 8, "bounded by max_blocks");
    }

    #[test]
    fn every_block_size_hashes_alike() {
        // 64 bytes, GIE's size, has a path of its own: the values of the general one, for
        // prompts of every length around a block's and limits below and past their blocks.
        let text: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        for len in [0, 63, 64, 65, 128, 1000, 5000] {
            for max in [1, 8, 40, 500] {
                let mut general = Vec::new();
                chained(&mut general, XxHash64::oneshot(BLOCK_SEED, b"m"), text[..len].chunks_exact(64).take(max));
                // Into a buffer an earlier request left full.
                let mut reused = vec![7; 600];
                block_hashes_into(&mut reused, "m", &text[..len], 64, max);
                assert_eq!(reused, general, "{len} bytes, {max} blocks");
            }
        }
    }

    #[test]
    fn matches_the_leading_run_and_forgets_the_oldest() {
        let mut index = PrefixIndex::default();
        index.record("a", &[1, 2, 3], Match::default(), 100);
        assert_eq!(index.matched("a", &[1, 2, 3, 4]).blocks, 3);
        assert_eq!(index.matched("a", &[9, 2, 3]).blocks, 0, "a prefix match stops at the first miss");
        assert_eq!(index.matched("b", &[1]).blocks, 0);
        // Capacity 4: generations of 2; old blocks go once two newer generations filled.
        let mut small = PrefixIndex::default();
        small.record("a", &[1, 2], Match::default(), 4);
        small.record("a", &[3, 4], Match::default(), 4);
        small.record("a", &[5, 6], Match::default(), 4);
        assert_eq!(small.matched("a", &[1]).blocks, 0);
        assert_eq!(small.matched("a", &[5, 6]).blocks, 2);
    }

    #[test]
    fn recording_after_a_match_leaves_the_index_as_recording_everything() {
        // Prompts of shared prefixes, recorded again and again in a small index (its
        // generations turn over often): the blocks the match found in the current
        // generation are skipped, and every later match is the same as without skipping.
        let prompts: Vec<Vec<u64>> = (0..40u64).map(|i| (0..(i % 7 + 1)).map(|b| b * 10 + i % 3).collect()).collect();
        let (mut skipping, mut full) = (PrefixIndex::default(), PrefixIndex::default());
        for p in prompts.iter().cycle().take(400) {
            let found = skipping.matched("a", p);
            assert_eq!(found, full.matched("a", p));
            skipping.record("a", p, found, 9);
            full.record("a", p, Match::default(), 9);
            for q in &prompts {
                assert_eq!(skipping.matched("a", q), full.matched("a", q));
            }
        }
    }

    #[test]
    fn endpoints_that_left_are_forgotten_past_the_limit() {
        let mut index = PrefixIndex::default();
        for i in 0..MAX_ENDPOINTS + 10 {
            index.record(&format!("10.0.{}.{}:8000", i / 256, i % 256), &[1], Match::default(), 10);
        }
        assert_eq!(index.endpoints(), MAX_ENDPOINTS);
        assert_eq!(index.matched("10.0.0.0:8000", &[1]).blocks, 0, "the oldest went first");
        assert_eq!(index.matched("10.0.4.9:8000", &[1]).blocks, 1);
    }

}
