//! The proxy's shared data (one store per `vm_id`, so per proxy) as the core sees it: a
//! trait the ABI glue implements with host calls, and an in-memory twin for tests.

/// The host's shared data, as the ABI offers it: values with a version (CAS).
pub trait SharedStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores `value` if the key's version is still `cas` (0: unconditionally); false if not.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> bool;
}

/// Read-modify-write of `key` under CAS: `change` gets the current value (empty if none)
/// and returns the new one, or `None` to leave it. A worker that lost the race to another
/// reads again; after `attempts` it gives up and says so (false).
pub fn update(store: &dyn SharedStore, key: &str, attempts: usize, mut change: impl FnMut(&[u8]) -> Option<Vec<u8>>) -> bool {
    for _ in 0..attempts {
        let (bytes, cas) = store.get(key).unwrap_or_default();
        let Some(new) = change(&bytes) else { return true };
        if store.set(key, &new, cas) {
            return true;
        }
    }
    false
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
