//! This proxy's requests in flight to each endpoint, shared by all its workers.
//!
//! Between two scrapes every decision sees the same queue lengths: a burst would land on
//! one endpoint. So each worker counts what it sends, in one shared-data value (a u32 per
//! configured endpoint, in config order): a request adds one where it goes and takes it
//! off when its stream ends. The scraper notes the count as it reads each metrics page;
//! scorers add what was sent since (`Candidate::pending`), so a count that leaked (a lost
//! update) cancels out.
//!
//! One value for the whole pool: a decision reads it with one host call, whatever the
//! pool's size (a gauge per endpoint cost a host call per endpoint per request).

use crate::shared::{self, SharedStore};

pub const KEY: &str = "wasm-epp/v1/in-flight";

/// Lost races retried before an update is dropped: workers write this key on every
/// request and every stream end.
const ATTEMPTS: usize = 16;

/// The counts as read (the stored bytes: a decision looks up only its candidates), with
/// the version they had.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    bytes: Vec<u8>,
    cas: u32,
}

impl Snapshot {
    pub fn read(store: &dyn SharedStore) -> Snapshot {
        let (bytes, cas) = store.get(KEY).unwrap_or_default();
        Snapshot { bytes, cas }
    }

    /// The count of the endpoint at `index` of the configuration.
    pub fn get(&self, index: usize) -> i64 {
        let word = index.checked_mul(4).and_then(|at| self.bytes.get(at..)?.get(..4));
        word.map_or(0, |c| i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
    }
}

/// Adds `delta` to the count of the endpoint at `index` (never below zero). `seen`, a
/// snapshot this worker just read, saves a read if no one wrote since.
pub fn add(store: &dyn SharedStore, index: usize, delta: i32, seen: Option<Snapshot>) {
    let seen = seen.filter(|s| s.cas != 0).map(|s| (s.bytes, s.cas));
    let added = |bytes: &[u8]| {
        let mut counts = shared::decode_u32s(bytes);
        if counts.len() <= index {
            counts.resize(index + 1, 0);
        }
        counts[index] = counts[index].saturating_add_signed(delta);
        Some(shared::encode_u32s(&counts))
    };
    if !shared::update(store, KEY, ATTEMPTS, seen, added) {
        log::warn!("wasm-epp: in-flight count of endpoint {index} not updated: shared data kept changing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn counts_up_and_down_per_endpoint() {
        let store = MemoryStore::default();
        assert_eq!(Snapshot::read(&store).get(3), 0, "nothing counted yet");
        add(&store, 3, 1, None);
        add(&store, 3, 1, Some(Snapshot::read(&store)));
        add(&store, 0, 1, None);
        let s = Snapshot::read(&store);
        assert_eq!((s.get(0), s.get(1), s.get(3)), (1, 0, 2));
        add(&store, 3, -1, None);
        add(&store, 1, -1, None);
        let s = Snapshot::read(&store);
        assert_eq!((s.get(1), s.get(3)), (0, 1), "never below zero");
    }

    #[test]
    fn a_stale_snapshot_does_not_lose_another_workers_count() {
        let store = MemoryStore::default();
        add(&store, 0, 1, None);
        let mine = Snapshot::read(&store);
        add(&store, 1, 1, None); // another worker, after my read
        add(&store, 0, 1, Some(mine));
        let s = Snapshot::read(&store);
        assert_eq!((s.get(0), s.get(1)), (2, 1));
    }
}
