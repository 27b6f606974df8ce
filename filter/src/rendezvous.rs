//! Rendezvous (highest random weight) hashing: every VM and every proxy ranks the same
//! endpoints the same way for a key, without talking to each other, and removing an
//! endpoint moves only the keys that ranked it first. The prefix scorer places new
//! prefixes by it, and the LoRA filter gives each adapter its homes.

use core::hash::BuildHasher;

use foldhash::quality::FixedState;

/// Fixed seeds, so that every VM agrees.
const NAME_SEED: u64 = 0x5eed_b10c;
const PLACEMENT_SEED: u64 = 0x9ace_11e5;

/// A stable hash of a name (an adapter's, say), to rank endpoints for it by `rank`.
pub fn name_hash(name: &str) -> u64 {
    FixedState::with_seed(NAME_SEED).hash_one(name.as_bytes())
}

/// The addresses ranked for `anchor` (a prefix's block hash, an adapter's name hash),
/// home first, as indices into `addresses`.
pub fn rank(anchor: u64, addresses: impl Iterator<Item = impl AsRef<str>>) -> Vec<usize> {
    let state = FixedState::with_seed(PLACEMENT_SEED);
    let mut ranked: Vec<(u64, usize)> =
        addresses.enumerate().map(|(i, a)| (state.hash_one((anchor, a.as_ref().as_bytes())), i)).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn home_is_the_same_everywhere_and_spreads() {
        let addrs = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000"];
        let mut counts = [0; 4];
        for anchor in 0..4000u64 {
            let h = rank(anchor, addrs.iter())[0];
            assert_eq!(rank(anchor, addrs.iter()), rank(anchor, addrs.iter()));
            counts[h] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        // Removing an endpoint moves only the anchors that lived there.
        let moved = (0..4000u64)
            .filter(|&a| {
                let before = rank(a, addrs.iter())[0];
                before != 3 && rank(a, addrs[..3].iter())[0] != before
            })
            .count();
        assert_eq!(moved, 0);
    }
}
