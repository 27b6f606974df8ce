//! The proxy's shared data (one store per `vm_id`, so per proxy) as the core sees it: a
//! trait the ABI glue implements with host calls, and an in-memory twin for tests.

/// The host's shared data, as the ABI offers it: values with a version (CAS).
pub trait SharedStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores `value` if the key's version is still `cas` (0: unconditionally); false if not.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool;
}

/// Read-modify-write of `key` under CAS: `change` gets the current value (empty if none)
/// and returns the new one, or `None` to leave it. `seen`, the value and version this
/// worker just read, saves the first read. A worker that lost the race to another reads
/// again; after `attempts` it gives up and says so (false).
pub fn update(
    store: &dyn SharedStore,
    key: &str,
    attempts: usize,
    seen: Option<(Vec<u8>, u32)>,
    mut change: impl FnMut(&[u8]) -> Option<Vec<u8>>,
) -> bool {
    let mut current = seen;
    for _ in 0..attempts {
        let (bytes, cas) = match current.take() {
            Some(value) => value,
            None => store.get(key).unwrap_or_default(),
        };
        let Some(new) = change(&bytes) else { return true };
        if store.set(key, &new, cas) {
            return true;
        }
    }
    false
}

/// A list of little-endian u32s, as the small shared values store numbers.
pub fn decode_u32s(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub fn encode_u32s(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Another store's values as read within one millisecond: a worker deciding many
/// requests a millisecond reads each key once (a host call costs about a microsecond in
/// Envoy's V8), and sees what other workers wrote at most a millisecond late. A write
/// goes through and forgets the key, so a CAS write always starts from a read with the
/// value's true version.
#[derive(Default)]
pub struct ReadsThisMillisecond {
    at_ms: core::cell::Cell<u64>,
    read: core::cell::RefCell<hashbrown::HashMap<String, Option<(Vec<u8>, u32)>>>,
}

impl ReadsThisMillisecond {
    /// `store`, as seen at `now_ms`.
    pub fn at<'a>(&'a self, store: &'a dyn SharedStore, now_ms: u64) -> CachedStore<'a> {
        if self.at_ms.replace(now_ms) != now_ms {
            self.read.borrow_mut().clear();
        }
        CachedStore { store, reads: self }
    }
}

pub struct CachedStore<'a> {
    store: &'a dyn SharedStore,
    reads: &'a ReadsThisMillisecond,
}

impl SharedStore for CachedStore<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        if let Some(value) = self.reads.read.borrow().get(key) {
            return value.clone();
        }
        let value = self.store.get(key);
        self.reads.read.borrow_mut().insert(key.to_string(), value.clone());
        value
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        self.reads.read.borrow_mut().remove(key);
        self.store.set(key, value, cas)
    }
}

/// An in-memory store with the host's CAS rules, for tests and native runs.
#[derive(Default)]
pub struct MemoryStore(core::cell::RefCell<hashbrown::HashMap<String, (Vec<u8>, u32)>>);

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.0.borrow().get(key).cloned()
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        let mut map = self.0.borrow_mut();
        let version = map.get(key).map_or(0, |(_, v)| *v);
        if cas != 0 && cas != version {
            return false;
        }
        map.insert(key.to_string(), (value.to_vec(), version + 1));
        true
    }
}

/// A store that counts the host calls made on it (reads, writes), for tests.
#[cfg(test)]
#[derive(Default)]
pub struct CountingStore {
    pub store: MemoryStore,
    pub calls: core::cell::Cell<(usize, usize)>,
}

#[cfg(test)]
impl SharedStore for CountingStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let (gets, sets) = self.calls.get();
        self.calls.set((gets + 1, sets));
        self.store.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        let (gets, sets) = self.calls.get();
        self.calls.set((gets, sets + 1));
        self.store.set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn reads_are_shared_within_a_millisecond_and_writes_go_through() {
        let host = CountingStore::default();
        let reads = ReadsThisMillisecond::default();
        host.set("k", b"1", 0);
        let at = |ms| reads.at(&host, ms);
        assert_eq!(at(5).get("k").map(|v| v.0), Some(b"1".to_vec()));
        assert_eq!(at(5).get("k").map(|v| v.0), Some(b"1".to_vec()));
        assert_eq!(at(5).get("none"), None);
        assert_eq!(at(5).get("none"), None);
        assert_eq!(host.calls.get(), (2, 1), "one read of each key in the millisecond");
        // Another worker writes: seen in the next millisecond.
        host.set("k", b"2", 0);
        assert_eq!(at(5).get("k").unwrap().0, b"1");
        assert_eq!(at(6).get("k").unwrap().0, b"2");
        // A CAS write from this millisecond's read: it fails if someone wrote since, and the
        // retry reads the true version.
        let cached = at(6);
        host.set("k", b"3", 0);
        assert!(update(&cached, "k", 4, None, |v| Some([v, b"+"].concat())));
        assert_eq!(host.store.get("k").unwrap().0, b"3+", "the other worker's write kept");
        assert_eq!(at(6).get("k").unwrap().0, b"3+", "a write forgets the key");
    }
}
