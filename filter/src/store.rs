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
