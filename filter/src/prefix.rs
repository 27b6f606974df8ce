//! Approximate prefix-cache state, as GIE's prefix plugin keeps it: the prompt cut into
//! fixed blocks of bytes (GIE: 16 tokens × 4 characters), each block's hash a hash of
//! the prompt up to its end, seeded with the model name, and per endpoint a bounded set of
//! the block hashes it was sent, least recently used forgotten first.

use core::hash::{BuildHasherDefault, Hasher};

use hashbrown::{HashMap, HashSet};
use twox_hash::XxHash64;

/// A fixed seed: every VM of every proxy running this module computes the same hashes, so
/// their indexes agree.
const BLOCK_SEED: u64 = 0x5eed_b10c;

/// The hashes of the first `max_blocks` full blocks of `prompt`, each a hash of the
/// prompt up to the end of its block, seeded with the model name. A partial last block
/// is left out: the server cannot have cached it as a block either.
pub fn block_hashes(model: &str, prompt: &[u8], block_bytes: usize, max_blocks: usize) -> Vec<u64> {
    let mut hashes = Vec::new();
    block_hashes_into(&mut hashes, model_seed(model), prompt, block_bytes, max_blocks);
    hashes
}

/// What a model's block hashes and anchors are seeded with: a scorer computes it once a
/// request for both.
pub fn model_seed(model: &str) -> u64 {
    XxHash64::oneshot(BLOCK_SEED, model.as_bytes())
}

/// `block_hashes` into `hashes` (cleared first), from the model's seed: a scorer keeps one
/// buffer for every request.
pub fn block_hashes_into(hashes: &mut Vec<u64>, seed: u64, prompt: &[u8], block_bytes: usize, max_blocks: usize) {
    hashes.clear();
    if block_bytes == 64 {
        // GIE's block size, the default: blocks of a length known when compiling hash in
        // straight-line code.
        return running(hashes, seed, prompt.as_chunks::<64>().0.iter().take(max_blocks));
    }
    if block_bytes.is_multiple_of(STRIPE) {
        return running(hashes, seed, prompt.chunks_exact(block_bytes).take(max_blocks));
    }
    // Other sizes: XXH64 of each prefix, by the library's streaming hasher.
    let mut prefix = XxHash64::with_seed(seed);
    hashes.extend(prompt.chunks_exact(block_bytes.max(1)).take(max_blocks).map(|block| {
        prefix.write(block);
        prefix.finish()
    }));
}

/// The hash that names a prompt's home: its first `blocks` blocks, XXH64 a block, each
/// seeded with the hash before it. It is what every replica computes and what they tell
/// each other in their prefix records, so it keeps its definition from version to
/// version: replicas of two versions agree on homes while a fleet upgrades. (The block
/// hashes above are each VM's own and may change.) `blocks` is small (GIE's
/// `placementBlock`, 8 by default): the chain's serial cost does not matter here.
pub fn anchor(seed: u64, prompt: &[u8], block_bytes: usize, blocks: usize) -> u64 {
    prompt.chunks_exact(block_bytes.max(1)).take(blocks).fold(seed, XxHash64::oneshot)
}

/// XXH64's stripe: four lanes of eight bytes.
const STRIPE: usize = 32;
const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;

/// XXH64's four lanes run over the whole prompt, and each block's hash folds them as
/// they stand at its end. A hash of every prefix at the cost of one pass: the lanes never
/// wait for a block's hash, where chaining whole XXH64s (each block seeded with the hash
/// before it) put XXH64's 30 multiplies a block on one serial path; here they are 18,
/// and the lanes run four abreast.
fn running<B: AsRef<[u8]>>(hashes: &mut Vec<u64>, seed: u64, blocks: impl Iterator<Item = B>) {
    let round = |lane: u64, word: &[u8; 8]| lane.wrapping_add(u64::from_le_bytes(*word).wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1);
    let mut lanes = [seed.wrapping_add(P1).wrapping_add(P2), seed.wrapping_add(P2), seed, seed.wrapping_sub(P1)];
    let mut length = 0u64;
    hashes.extend(blocks.map(|block| {
        let block = block.as_ref();
        for stripe in block.as_chunks::<STRIPE>().0 {
            let words = stripe.as_chunks::<8>().0;
            for (lane, word) in lanes.iter_mut().zip(words) {
                *lane = round(*lane, word);
            }
        }
        length += block.len() as u64;
        let [a, b, c, d] = lanes;
        let folded = a.rotate_left(1).wrapping_add(b.rotate_left(7)).wrapping_add(c.rotate_left(12)).wrapping_add(d.rotate_left(18));
        avalanche(folded.wrapping_add(length))
    }));
}

/// XXH64's final mix: every input bit reaches every output bit.
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// Block hashes and endpoint ids are hashes already: a map of them need not hash them
/// again (a general hasher's 128-bit multiplies are emulated on wasm32).
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
    fn write_u32(&mut self, id: u32) {
        // An endpoint id is uniform in its low 31 bits; hashbrown also reads the top ones.
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type BlockSet = HashSet<u64, BuildHasherDefault<Identity>>;

/// The block hashes one endpoint was sent, at most about `capacity`, least recently used
/// forgotten first. Two generations approximate LRU in O(1): hits are copied to the
/// current one; when the next prompt would overfill it, the previous generation is
/// dropped. A generation turns over between prompts, never inside one: a prompt's later
/// blocks never outlive its first ones (nothing could match them), and what a generation
/// holds of any prompt is a leading run. (A copy left behind in the previous generation
/// changes no answer, and removing it cost every new block a probe there: 6% of a
/// decision on a new 16 KB prompt.)
#[derive(Debug, Default)]
struct Recent {
    current: BlockSet,
    previous: BlockSet,
}

impl Recent {
    /// Records a prompt whose first `from` blocks are in the current generation already
    /// (a bisection checks past them). If the rest would overfill it, the generation turns
    /// over first and the whole prompt goes into the new one.
    fn insert_prompt(&mut self, hashes: &[u64], from: usize, capacity: usize) {
        let from = from.min(hashes.len());
        let from = from + leading_run(&hashes[from..], |h| self.current.contains(h));
        let new = &hashes[from..];
        if new.is_empty() {
            return;
        }
        if !self.current.is_empty() && self.current.len() + new.len() > capacity.div_ceil(2).max(1) {
            // The dropped generation's table, emptied, holds the next one: a generation
            // grows to its size once, not again after every turn (its rehashes were a
            // tenth of a 16 KB decision's cost).
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
            self.current.extend(hashes);
        } else {
            self.current.extend(new);
        }
    }
}

/// How many leading blocks of `hashes` a generation (`has`) holds. It holds prompts from
/// their first block, and a block's hash covers every block before it, so what it holds is
/// a leading run: two lookups find a whole match and a bisection a partial one, where a
/// scan looked up every block (a tenth of a 16 KB decision).
fn leading_run(hashes: &[u64], has: impl Fn(&u64) -> bool) -> usize {
    match hashes {
        [] => 0,
        [first, ..] if !has(first) => 0,
        [.., last] if has(last) => hashes.len(),
        _ => hashes.partition_point(has),
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
    /// Each endpoint's blocks, and when it was last sent one (a count of records), by its
    /// `prefix_record::endpoint_id`: a decision computes each candidate's id once, where
    /// keying by address hashed every address again for every lookup.
    endpoints: HashMap<u32, (Recent, u64), BuildHasherDefault<Identity>>,
    records: u64,
}

/// Endpoints the index remembers at most: pods come and go, and one that left must not
/// keep its blocks forever. Past it, the one sent nothing for longest is forgotten.
pub const MAX_ENDPOINTS: usize = 1024;

impl PrefixIndex {
    /// How many leading blocks of `hashes` were sent to `endpoint` (up to the first miss).
    /// `hashes` is a chain, as `block_hashes` makes it: each block's hash covers the
    /// blocks before it.
    pub fn matched(&self, endpoint: u32, hashes: &[u64]) -> Match {
        let Some((r, _)) = self.endpoints.get(&endpoint) else { return Match::default() };
        let current = leading_run(hashes, |h| r.current.contains(h));
        // Past the current generation's run, none of the prompt's blocks is in it.
        let older = leading_run(&hashes[current..], |h| r.previous.contains(h));
        Match { blocks: current + older, current }
    }

    /// Endpoints with blocks remembered.
    pub fn endpoints(&self) -> usize {
        self.endpoints.len()
    }

    /// `endpoint` was sent a prompt with these blocks; it keeps about `capacity` of them.
    /// `matched` is what `matched` found for it since the index last changed: the blocks
    /// already in its current generation are left as they are (the decision's own lookups
    /// told where they are; one more lookup checks the block after them, so that an older
    /// `matched` still turns the generation over where recording everything would).
    pub fn record(&mut self, endpoint: u32, hashes: &[u64], matched: Match, capacity: usize) {
        self.records += 1;
        if !self.endpoints.contains_key(&endpoint) {
            if self.endpoints.len() >= MAX_ENDPOINTS {
                let oldest = self.endpoints.iter().min_by_key(|(_, (_, at))| *at).map(|(&e, _)| e);
                if let Some(e) = oldest {
                    self.endpoints.remove(&e);
                }
            }
            self.endpoints.insert(endpoint, (Recent::default(), 0));
        }
        let records = self.records;
        if let Some((r, at)) = self.endpoints.get_mut(&endpoint) {
            *at = records;
            r.insert_prompt(hashes, matched.current, capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefix_record::endpoint_id;
    use crate::test;

    #[test]
    fn each_block_hashes_its_prefix_seeded_by_model() {
        for size in [64, 96, 50] {
            let a = block_hashes("m", &[b'x'; 400], size, 256);
            assert_eq!(a.len(), 400 / size, "full blocks of {size} bytes; a partial last one is left out");
            let mut text = vec![b'x'; 400];
            text[size + 6] = b'y';
            let b = block_hashes("m", &text, size, 256);
            assert_eq!(a[0], b[0], "{size}");
            assert_ne!(a[1], b[1], "{size}");
            assert_ne!(a[2..], b[2..], "{size}: a change carries on to every later block");
            let mut later = text.clone();
            later[3 * size..].fill(b'z');
            assert_eq!(block_hashes("m", &later, size, 256)[..3], b[..3], "{size}: a block's hash sees nothing past it");
            assert_ne!(block_hashes("n", &[b'x'; 400], size, 256)[..1], a[..1], "{size}");
            assert_eq!(a.iter().collect::<HashSet<_>>().len(), a.len(), "{size}: repeated blocks still hash apart");
            assert_eq!(block_hashes("m", &[b'x'; 10_000], size, 8).len(), 8, "bounded by max_blocks");
        }
    }

    #[test]
    fn an_anchor_keeps_its_value_from_version_to_version() {
        // Replicas exchange anchors: these values are what earlier versions computed (a
        // new definition would need a new record format, not a new constant here).
        let text: Vec<u8> = (0..1000u32).map(|i| b'a' + (i * 7 % 26) as u8).collect();
        const ANCHOR_M_8: u64 = 0xf236_447e_83c3_2ff0;
        const ANCHOR_LLAMA_3: u64 = 0xbade_33c8_616d_1296;
        const ANCHOR_M_8_OF_50: u64 = 0x8387_695a_4349_8529;
        let m = model_seed("m");
        assert_eq!(anchor(m, &text, 64, 8), ANCHOR_M_8);
        assert_eq!(anchor(model_seed("meta-llama/Llama-3.1-8B-Instruct"), &text, 64, 3), ANCHOR_LLAMA_3);
        assert_eq!(anchor(m, &text, 50, 8), ANCHOR_M_8_OF_50);
        assert_ne!(anchor(m, &text, 64, 7), anchor(m, &text, 64, 8));
    }

    #[test]
    fn the_lanes_hash_as_xxh64_mixes() {
        // 200,000 prefixes of 64-byte blocks: one bit changed in a block, blocks swapped, a
        // block repeated. No two hashes alike, and the low and the high byte as even as a
        // uniform hash's (hash sets index by the low bits, hashbrown tags by the high).
        let block = |i: u64| -> Vec<u8> {
            let mut rng = crate::rng::Rng::new(i);
            (0..64).map(|_| b'a' + (rng.next_u64() % 26) as u8).collect()
        };
        let mut all = HashSet::new();
        let mut low = [0u32; 256];
        let mut high = [0u32; 256];
        for i in 0..50_000u64 {
            let (x, y) = (block(i), block(i + 1));
            let mut one = x.clone();
            one[(i % 64) as usize] ^= 1 << (i % 7);
            for prompt in [[x.clone(), y.clone()].concat(), [y.clone(), x.clone()].concat(), [one, y.clone()].concat(), [x.clone(), x].concat()] {
                let h = block_hashes("m", &prompt, 64, 2)[1];
                all.insert(h);
                low[(h & 255) as usize] += 1;
                high[(h >> 56) as usize] += 1;
            }
        }
        assert_eq!(all.len(), 200_000, "no collision");
        // χ² over 256 buckets of 781.25 on average: a uniform hash gives 255 ± 23.
        for counts in [low, high] {
            let chi: f64 = counts.iter().map(|&n| (f64::from(n) - 781.25).powi(2) / 781.25).sum();
            assert!(chi < 400.0, "χ² {chi:.0}: {counts:?}");
        }
    }

    #[test]
    fn every_block_size_of_whole_stripes_hashes_alike() {
        // 64 bytes, GIE's size, has a path of its own: the values of the general one, for
        // prompts of every length around a block's and limits below and past their blocks.
        let text: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        for len in [0, 63, 64, 65, 128, 1000, 5000] {
            for max in [1, 8, 40, 500] {
                let mut general = Vec::new();
                running(&mut general, model_seed("m"), text[..len].chunks_exact(64).take(max));
                // Into a buffer an earlier request left full.
                let mut reused = vec![7; 600];
                block_hashes_into(&mut reused, model_seed("m"), &text[..len], 64, max);
                assert_eq!(reused, general, "{len} bytes, {max} blocks");
            }
        }
    }

    #[test]
    fn matches_the_leading_run_and_forgets_the_oldest() {
        let (a, b) = (endpoint_id("a"), endpoint_id("b"));
        let mut index = PrefixIndex::default();
        index.record(a, &[1, 2, 3], Match::default(), 100);
        assert_eq!(index.matched(a, &[1, 2, 3, 4]).blocks, 3);
        assert_eq!(index.matched(a, &[9, 2, 3]).blocks, 0, "a prefix match stops at the first miss");
        assert_eq!(index.matched(b, &[1]).blocks, 0);
        // Capacity 4: generations of 2; old blocks go once two newer generations filled.
        let mut small = PrefixIndex::default();
        small.record(a, &[1, 2], Match::default(), 4);
        small.record(a, &[3, 4], Match::default(), 4);
        small.record(a, &[5, 6], Match::default(), 4);
        assert_eq!(small.matched(a, &[1]).blocks, 0);
        assert_eq!(small.matched(a, &[5, 6]).blocks, 2);
    }

    #[test]
    fn recording_after_a_match_leaves_the_index_as_recording_everything() {
        // Prompts of shared prefixes, recorded again and again in a small index (its
        // generations turn over often): the blocks the match found in the current
        // generation are skipped, and every later match is the same as without skipping.
        let prompts: Vec<Vec<u64>> = (0..40u64).map(|i| (0..(i % 7 + 1)).map(|b| b * 10 + i % 3).collect()).collect();
        let a = endpoint_id("a");
        let (mut skipping, mut full) = (PrefixIndex::default(), PrefixIndex::default());
        for p in prompts.iter().cycle().take(400) {
            let found = skipping.matched(a, p);
            assert_eq!(found, full.matched(a, p));
            skipping.record(a, p, found, 9);
            full.record(a, p, Match::default(), 9);
            for q in &prompts {
                assert_eq!(skipping.matched(a, q), full.matched(a, q));
            }
        }
    }

    /// What `matched` found by looking up every block up to the first miss.
    fn scanned(index: &PrefixIndex, endpoint: u32, hashes: &[u64]) -> Match {
        let Some((r, _)) = index.endpoints.get(&endpoint) else { return Match::default() };
        let current = hashes.iter().take_while(|&h| r.current.contains(h)).count();
        let older = hashes[current..].iter().take_while(|&h| r.current.contains(h) || r.previous.contains(h)).count();
        Match { blocks: current + older, current }
    }

    #[test]
    fn the_bisection_finds_what_a_scan_of_every_block_finds() {
        // Conversations that grow and branch off each other, in indexes small enough that
        // generations turn over every few prompts: after every record, each prompt's match
        // is what a block-by-block scan of both generations finds.
        let mut rng = crate::rng::Rng::new(11);
        let mut below = |n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
        let a = endpoint_id("a");
        let (mut partial, mut split) = (0, 0);
        for capacity in [3, 8, 20, 64] {
            let mut index = PrefixIndex::default();
            let mut prompts: Vec<Vec<u64>> = Vec::new();
            for step in 0..400u64 {
                // A known prompt again, or a leading part of one (or nothing) and new blocks.
                let mut p = match prompts.len() {
                    n if n > 0 && below(4) == 0 => prompts[below(n)].clone(),
                    n => {
                        let known = if n > 0 { prompts[below(n)].clone() } else { vec![] };
                        let mut p = known[..below(known.len() + 1)].to_vec();
                        for k in 0..1 + below(12) {
                            // Chained, as `block_hashes`: a block's hash covers the ones before.
                            let before = p.last().copied().unwrap_or(1);
                            p.push((before ^ (step << 8 | k as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                        }
                        p
                    }
                };
                p.truncate(40);
                let found = index.matched(a, &p);
                assert_eq!(found, scanned(&index, a, &p), "capacity {capacity}, step {step}");
                index.record(a, &p, found, capacity);
                prompts.push(p);
                for q in &prompts {
                    let m = index.matched(a, q);
                    assert_eq!(m, scanned(&index, a, q), "capacity {capacity}, step {step}: {q:?}");
                    partial += usize::from(m.blocks > 0 && m.blocks < q.len());
                    split += usize::from(m.current < m.blocks);
                }
            }
        }
        assert!(partial > 1000 && split > 1000, "the cases a bisection could get wrong came up: {partial} partial, {split} split");
    }

    #[test]
    fn endpoints_that_left_are_forgotten_past_the_limit() {
        let mut index = PrefixIndex::default();
        let id = |i: usize| endpoint_id(&format!("10.0.{}.{}:8000", i / 256, i % 256));
        for i in 0..MAX_ENDPOINTS + 10 {
            index.record(id(i), &[1], Match::default(), 10);
        }
        assert_eq!(index.endpoints(), MAX_ENDPOINTS);
        assert_eq!(index.matched(id(0), &[1]).blocks, 0, "the oldest went first");
        assert_eq!(index.matched(id(1033), &[1]).blocks, 1);
    }

}
