//! Where this proxy assigned each prefix, shared by all its workers.
//!
//! Every Envoy worker runs its own picker VM with its own prefix index. Without a shared
//! record, a group of requests that load sent somewhere other than its home would
//! scatter, one endpoint per worker. So the first endpoint a prefix's *anchor* (one of
//! its block hashes) goes to is its assignment for every worker of the proxy, until the
//! record forgets it. (Following the latest endpoint instead split groups over two
//! endpoints and lost hit rate: BENCHMARKS.md.)
//!
//! The record lives in proxy-wasm shared data (one store per `vm_id`, so per proxy), in a
//! fixed number of small keys, since the ABI cannot delete one: the anchor picks the key,
//! and each key keeps its most recently assigned anchors.

use core::hash::BuildHasher;

use foldhash::quality::FixedState;

pub use crate::shared::{MemoryStore, SharedStore};

const SHARDS: u64 = 256;
const PER_SHARD: usize = 16;
/// anchor (8) + endpoint id (4).
const ENTRY: usize = 12;

/// A short id of an endpoint address; 0 means none.
pub fn endpoint_id(address: &str) -> u32 {
    (FixedState::with_seed(0xadd7).hash_one(address.as_bytes()) as u32).max(1)
}

fn key(anchor: u64) -> String {
    format!("wasm-epp/v1/affinity/{}", anchor % SHARDS)
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    anchor: u64,
    endpoint: u32,
}

fn decode(bytes: &[u8]) -> Vec<Entry> {
    bytes
        .chunks_exact(ENTRY)
        .map(|c| {
            let word = |r: core::ops::Range<usize>| c[r].iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            Entry { anchor: word(0..8), endpoint: word(8..12) as u32 }
        })
        .collect()
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY);
    for e in entries {
        out.extend_from_slice(&e.anchor.to_le_bytes());
        out.extend_from_slice(&e.endpoint.to_le_bytes());
    }
    out
}

/// How many prefixes this proxy assigned to each endpoint, ever: (endpoint id, count)
/// pairs. Read only when a new prefix is placed and balance is asked for.
const GIVEN_KEY: &str = "wasm-epp/v1/affinity/given";

fn decode_given(bytes: &[u8]) -> Vec<(u32, u32)> {
    crate::shared::decode_u32s(bytes).chunks_exact(2).map(|p| (p[0], p[1])).collect()
}

pub fn prefixes_given(store: &dyn SharedStore) -> Vec<(u32, u32)> {
    decode_given(&store.get(GIVEN_KEY).unwrap_or_default().0)
}

fn count_given(store: &dyn SharedStore, endpoint: u32) {
    crate::shared::update(store, GIVEN_KEY, 8, None, |bytes| {
        let mut pairs = decode_given(bytes);
        match pairs.iter_mut().find(|(id, _)| *id == endpoint) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => pairs.push((endpoint, 1)),
        }
        let words: Vec<u32> = pairs.iter().flat_map(|&(id, n)| [id, n]).collect();
        Some(crate::shared::encode_u32s(&words))
    });
}

/// The endpoint (id) this proxy assigned `anchor` to, if it remembers one.
pub fn recall(store: &dyn SharedStore, anchor: u64) -> Option<u32> {
    let (bytes, _) = store.get(&key(anchor))?;
    decode(&bytes).into_iter().find(|e| e.anchor == anchor).map(|e| e.endpoint)
}

/// Assigns `anchor` to `endpoint`, unless it has an assignment already: a group that
/// stays put costs one read a request, and no write. With `count`, a new assignment is
/// counted in `prefixes_given`.
pub fn assign(store: &dyn SharedStore, anchor: u64, endpoint: u32, count: bool) {
    let mut new = false;
    // After a few lost races, losing one assignment is fine.
    crate::shared::update(store, &key(anchor), 3, None, |bytes| {
        let mut entries = decode(bytes);
        if entries.iter().any(|e| e.anchor == anchor) {
            return None;
        }
        entries.insert(0, Entry { anchor, endpoint });
        entries.truncate(PER_SHARD);
        new = true;
        Some(encode(&entries))
    });
    if new && count {
        count_given(store, endpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_first_assignment_sticks() {
        let store = MemoryStore::default();
        assert_eq!(recall(&store, 7), None);
        assign(&store, 7, 1, true);
        assign(&store, 7, 2, true);
        assert_eq!(recall(&store, 7), Some(1));
        assert_eq!(store.get(&key(7)).unwrap().1, 1, "an existing assignment is not written again");
        assign(&store, 7 + SHARDS, 3, true);
        assert_eq!(recall(&store, 7 + SHARDS), Some(3), "same shard, own entry");
        assert_eq!(recall(&store, 7), Some(1));
        assert_eq!(prefixes_given(&store), vec![(1, 1), (3, 1)], "new assignments counted, repeats not");
        assign(&store, 8, 5, false);
        assert_eq!(prefixes_given(&store).len(), 2, "counted only when asked");
    }

    #[test]
    fn a_shard_keeps_the_most_recent_anchors() {
        let store = MemoryStore::default();
        for i in 0..(PER_SHARD as u64 + 4) {
            assign(&store, i * SHARDS, 5, false);
        }
        assert_eq!(recall(&store, 0), None, "the oldest anchors went");
        assert_eq!(recall(&store, (PER_SHARD as u64 + 3) * SHARDS), Some(5));
        assert_eq!(store.get(&key(0)).unwrap().0.len(), PER_SHARD * ENTRY);
    }

    #[test]
    fn a_lost_race_is_retried() {
        struct Flaky(MemoryStore, core::cell::Cell<u32>);
        impl SharedStore for Flaky {
            fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
                self.0.get(key)
            }
            fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
                self.1.set(self.1.get() + 1);
                // Another worker writes first, once.
                if self.1.get() == 1 {
                    self.0.set(key, &encode(&[Entry { anchor: 99, endpoint: 9 }]), 0);
                    return false;
                }
                self.0.set(key, value, cas)
            }
        }
        let store = Flaky(MemoryStore::default(), Default::default());
        assign(&store, 99 + SHARDS, 4, false);
        assert_eq!(recall(&store, 99 + SHARDS), Some(4));
        assert_eq!(recall(&store, 99), Some(9), "the other worker's write survived");
    }
}
