//! Where this proxy assigned each prefix, shared by all its workers.
//!
//! Every Envoy worker runs its own picker VM with its own prefix index. Without a shared
//! record, a group of requests that load sent somewhere other than its home would
//! scatter, one endpoint per worker. So the first endpoint a prefix's *anchor* (one of
//! its block hashes) goes to is its assignment for every worker of the proxy, until the
//! record forgets it. (Following the latest endpoint instead splits a group over two
//! endpoints.)
//!
//! The record lives in proxy-wasm shared data (one store per `vm_id`, so per proxy), in a
//! fixed number of small keys, since the ABI cannot delete one: the anchor picks the key,
//! and each key keeps its most recently assigned anchors.

use core::hash::BuildHasher;

use foldhash::quality::FixedState;

use crate::store::SharedStore;

const SHARDS: u64 = 256;
const PER_SHARD: usize = 16;
/// anchor (8) + endpoint id (4).
const ENTRY: usize = 12;

/// A short id of an endpoint address (31 bits); 0 means none.
pub fn endpoint_id(address: &str) -> u32 {
    ((FixedState::with_seed(0xadd7).hash_one(address.as_bytes()) as u32) & !PROTECTED).max(1)
}

/// The top bit of an entry's endpoint word: the entry was used again after it was made,
/// and sits in the shard's protected segment, which new prompts cannot push out.
const PROTECTED: u32 = 1 << 31;
/// At most this many protected entries a shard; the rest of it takes new prompts.
const MAX_PROTECTED: usize = PER_SHARD / 2;

fn key(anchor: u64) -> String {
    // Not `format!`: its machinery cost more than the rest of a request's lookup.
    [crate::names::keys::PREFIX_RECORD_SHARDS, itoa::Buffer::new().format(anchor % SHARDS)].concat()
}

/// A shard holds its protected entries first (most recently promoted first), then the
/// rest (most recent first): a segmented LRU, so that a flood of one-off prompts churns
/// only the second segment and the prefixes people come back to keep their homes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    anchor: u64,
    endpoint: u32,
    protected: bool,
}

fn entries(bytes: &[u8]) -> impl Iterator<Item = Entry> + '_ {
    bytes.as_chunks::<ENTRY>().0.iter().map(|c| {
        let (anchor, endpoint) = c.split_at(8);
        let anchor = u64::from_le_bytes(anchor.try_into().unwrap_or_default());
        let endpoint = u32::from_le_bytes(endpoint.try_into().unwrap_or_default());
        Entry { anchor, endpoint: endpoint & !PROTECTED, protected: endpoint & PROTECTED != 0 }
    })
}

fn decode(bytes: &[u8]) -> Vec<Entry> {
    entries(bytes).collect()
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY);
    for e in entries {
        out.extend_from_slice(&e.anchor.to_le_bytes());
        out.extend_from_slice(&(e.endpoint | if e.protected { PROTECTED } else { 0 }).to_le_bytes());
    }
    out
}

/// Where the unprotected segment of a shard starts.
fn protected_len(entries: &[Entry]) -> usize {
    entries.iter().take_while(|e| e.protected).count()
}

/// How many prefixes this proxy assigned to each endpoint, ever: (endpoint id, count)
/// pairs. Read only when a new prefix is placed and balance is asked for.
const GIVEN_KEY: &str = crate::names::keys::PREFIX_RECORD_GIVEN;

fn decode_given(bytes: &[u8]) -> Vec<(u32, u32)> {
    crate::store::decode_u32s(bytes).chunks_exact(2).map(|p| (p[0], p[1])).collect()
}

pub fn prefixes_given(store: &dyn SharedStore) -> Vec<(u32, u32)> {
    decode_given(&store.get(GIVEN_KEY).unwrap_or_default().0)
}

/// Counts one new prefix for each endpoint in `endpoints`, in one write.
fn count_given(store: &dyn SharedStore, endpoints: &[u32]) {
    if endpoints.is_empty() {
        return;
    }
    crate::store::update(store, GIVEN_KEY, 8, None, |bytes| {
        let mut pairs = decode_given(bytes);
        for &endpoint in endpoints {
            match pairs.iter_mut().find(|(id, _)| *id == endpoint) {
                Some((_, n)) => *n = n.saturating_add(1),
                None => pairs.push((endpoint, 1)),
            }
        }
        let words: Vec<u32> = pairs.iter().flat_map(|&(id, n)| [id, n]).collect();
        Some(crate::store::encode_u32s(&words))
    });
}

/// The endpoint (id) this proxy assigned `anchor` to, if it remembers one. The first time
/// an assignment is used again it is promoted to its shard's protected segment (one
/// write, once); after that a hit is a read.
pub fn recall(store: &dyn SharedStore, anchor: u64) -> Option<u32> {
    let key = key(anchor);
    let (bytes, cas) = store.get(&key)?;
    let found = entries(&bytes).find(|e| e.anchor == anchor)?;
    if !found.protected {
        crate::store::update(store, &key, 3, Some((bytes, cas)), |bytes| {
            let mut entries = decode(bytes);
            let at = entries.iter().position(|e| e.anchor == anchor && !e.protected)?;
            let mut e = entries.remove(at);
            e.protected = true;
            entries.insert(0, e);
            // Past the segment's size, its oldest goes back to the unprotected one.
            if protected_len(&entries) > MAX_PROTECTED {
                entries[MAX_PROTECTED].protected = false;
            }
            Some(encode(&entries))
        });
    }
    Some(found.endpoint)
}

/// Assigns `anchor` to `endpoint`, unless it has an assignment already: a group that
/// stays put costs one read a request, and no write. With `count`, a new assignment is
/// counted in `prefixes_given`.
pub fn assign(store: &dyn SharedStore, anchor: u64, endpoint: u32, count: bool) {
    let mut new = false;
    // After a few lost races, losing one assignment is fine.
    crate::store::update(store, &key(anchor), 3, None, |bytes| {
        let mut entries = decode(bytes);
        if entries.iter().any(|e| e.anchor == anchor) {
            return None;
        }
        entries.insert(protected_len(&entries), Entry { anchor, endpoint, protected: false });
        entries.truncate(PER_SHARD);
        new = true;
        Some(encode(&entries))
    });
    if new && count {
        count_given(store, &[endpoint]);
    }
}

/// The first line of an exported record: what it is and its format's version.
pub const EXPORT_MAGIC: &[u8] = b"wasm-epp affinity v1\n";

/// Every assignment this proxy remembers, for its peers: `EXPORT_MAGIC`, then the entries
/// (anchor u64, endpoint id u32, little-endian), shard by shard.
pub fn export(store: &dyn SharedStore) -> Vec<u8> {
    let mut out = EXPORT_MAGIC.to_vec();
    for shard in 0..SHARDS {
        if let Some((bytes, _)) = store.get(&key(shard)) {
            // Peers get plain endpoint ids: protection is this proxy's own bookkeeping.
            let plain: Vec<Entry> = decode(&bytes).into_iter().map(|e| Entry { protected: false, ..e }).collect();
            out.extend_from_slice(&encode(&plain));
        }
    }
    out
}

/// What adopting a peer's record changed here.
#[derive(Debug, Default, PartialEq)]
pub struct Adopted {
    /// Prefixes this proxy had no assignment for.
    pub new: usize,
    /// Prefixes the two proxies had assigned apart, now on the lower endpoint id.
    pub settled: usize,
}

/// Merges a peer's `export` into this proxy's record, so that both send a prefix to one
/// endpoint. A prefix this proxy does not know takes the peer's endpoint; a prefix the
/// two assigned apart (both saw it first before a round of exchange) takes the lower
/// endpoint id, a rule every proxy applies alike, so they agree after one round each.
pub fn adopt(store: &dyn SharedStore, record: &[u8]) -> Result<Adopted, &'static str> {
    let entries = record.strip_prefix(EXPORT_MAGIC).ok_or("not a wasm-epp affinity record (v1)")?;
    if entries.len() % ENTRY != 0 {
        return Err("a truncated affinity record");
    }
    let mut by_shard: hashbrown::HashMap<u64, Vec<Entry>> = hashbrown::HashMap::new();
    for e in decode(entries) {
        if e.endpoint != 0 {
            by_shard.entry(e.anchor % SHARDS).or_default().push(Entry { protected: false, ..e });
        }
    }
    let mut total = Adopted::default();
    let mut adopted: Vec<u32> = Vec::new();
    for (shard, theirs) in by_shard {
        let mut done = Adopted::default();
        let mut kept: Vec<u32> = Vec::new();
        let written = crate::store::update(store, &key(shard), 3, None, |bytes| {
            done = Adopted::default();
            kept.clear();
            let mut ours = decode(bytes);
            let mut fresh = Vec::new();
            for t in &theirs {
                match ours.iter_mut().find(|e| e.anchor == t.anchor) {
                    Some(e) if t.endpoint < e.endpoint => {
                        e.endpoint = t.endpoint;
                        done.settled += 1;
                    }
                    Some(_) => {}
                    None => fresh.push(*t),
                }
            }
            // Theirs go after the newer half of ours: a shard churned by one-off prompts
            // on either side still takes in the other's recent prefixes.
            let protected = protected_len(&ours);
            let at = protected + (ours.len() - protected).min(PER_SHARD / 4);
            fresh.truncate(PER_SHARD - at);
            done.new = fresh.len();
            if done.settled == 0 && fresh.is_empty() {
                return None;
            }
            kept = fresh.iter().map(|e| e.endpoint).collect();
            ours.splice(at..at, fresh);
            ours.truncate(PER_SHARD);
            Some(encode(&ours))
        });
        if !written {
            continue;
        }
        adopted.extend(kept);
        total.new += done.new;
        total.settled += done.settled;
    }
    count_given(store, &adopted);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::test;

    #[test]
    fn prefixes_used_again_outlive_a_flood_of_one_off_prompts() {
        let store = MemoryStore::default();
        // Eight popular prefixes in one shard, each used again once.
        let popular: Vec<u64> = (0..8).map(|i| 5 + i * SHARDS).collect();
        for &a in &popular {
            assign(&store, a, 1, false);
            assert_eq!(recall(&store, a), Some(1));
        }
        let writes = store.get(&key(5)).unwrap().1;
        for &a in &popular {
            assert_eq!(recall(&store, a), Some(1));
        }
        assert_eq!(store.get(&key(5)).unwrap().1, writes, "a protected hit is a read");
        // A client sends 5,000 distinct prompts into the same shard.
        for i in 0..5_000u64 {
            assign(&store, 5 + (100 + i) * SHARDS, 2, false);
        }
        for &a in &popular {
            assert_eq!(recall(&store, a), Some(1), "anchor {a} kept its home");
        }
        assert_eq!(recall(&store, 5 + 100 * SHARDS), None, "one-offs come and go");
        // Peers see plain endpoint ids.
        let exported = export(&store);
        let entries = decode(exported.strip_prefix(EXPORT_MAGIC).unwrap());
        assert!(entries.iter().all(|e| !e.protected && (e.endpoint == 1 || e.endpoint == 2)));
    }

    #[test]
    fn the_first_assignment_sticks() {
        let store = MemoryStore::default();
        assert_eq!(recall(&store, 7), None);
        assign(&store, 7, 1, true);
        assign(&store, 7, 2, true);
        assert_eq!(store.get(&key(7)).unwrap().1, 1, "an existing assignment is not written again");
        assert_eq!(recall(&store, 7), Some(1));
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
    fn peers_end_up_with_one_record() {
        let (a, b) = (MemoryStore::default(), MemoryStore::default());
        assign(&a, 1, 10, true);
        assign(&a, 2, 20, true);
        assign(&b, 3, 30, true);
        // Both saw anchor 4 first, and chose apart.
        assign(&a, 4, 40, true);
        assign(&b, 4, 41, true);
        let to_b = adopt(&b, &export(&a)).unwrap();
        assert_eq!(to_b, Adopted { new: 2, settled: 1 });
        let to_a = adopt(&a, &export(&b)).unwrap();
        assert_eq!(to_a, Adopted { new: 1, settled: 0 });
        for anchor in 1..=4 {
            assert_eq!(recall(&a, anchor), recall(&b, anchor), "anchor {anchor}");
        }
        assert_eq!(recall(&a, 4), Some(40), "the lower endpoint id wins, on both");
        assert_eq!(adopt(&a, &export(&b)).unwrap(), Adopted::default(), "a second round changes nothing");
        let given = prefixes_given(&b);
        assert!(given.contains(&(10, 1)) && given.contains(&(20, 1)), "adopted prefixes are counted: {given:?}");
    }

    #[test]
    fn a_full_shard_still_takes_in_a_peers_prefixes() {
        let (a, b) = (MemoryStore::default(), MemoryStore::default());
        for i in 1..=PER_SHARD as u64 {
            assign(&a, i * SHARDS, 1, false);
        }
        assign(&b, 0, 2, false);
        assert_eq!(adopt(&a, &export(&b)).unwrap().new, 1);
        assert_eq!(recall(&a, 0), Some(2));
        assert_eq!(recall(&a, PER_SHARD as u64 * SHARDS), Some(1), "this proxy's newest stay");
        assert_eq!(recall(&a, SHARDS), None, "its oldest made room");
        assert_eq!(store_len(&a, 0), PER_SHARD);
    }

    fn store_len(store: &MemoryStore, anchor: u64) -> usize {
        store.get(&key(anchor)).map_or(0, |(b, _)| b.len() / ENTRY)
    }

    #[test]
    fn anything_but_a_record_is_refused_and_changes_nothing() {
        let a = MemoryStore::default();
        assign(&a, 1, 10, false);
        let mut record = export(&a);
        record.pop();
        for bad in [&b""[..], b"<html>404</html>", b"wasm-epp affinity v2\n", &record[..]] {
            assert!(adopt(&a, bad).is_err(), "{bad:?}");
        }
        // An entry with no endpoint is not an assignment.
        let mut zero = EXPORT_MAGIC.to_vec();
        zero.extend_from_slice(&encode(&[Entry { anchor: 5, endpoint: 0, protected: false }]));
        assert_eq!(adopt(&a, &zero).unwrap(), Adopted::default());
        assert_eq!(recall(&a, 5), None);
        assert_eq!(export(&a), [EXPORT_MAGIC, &encode(&[Entry { anchor: 1, endpoint: 10, protected: false }])].concat());
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
                    self.0.set(key, &encode(&[Entry { anchor: 99, endpoint: 9, protected: false }]), 0);
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
