//! This proxy's requests in flight to each endpoint, shared by all its workers.
//!
//! Between two scrapes every decision sees the same queue lengths: a burst would land on
//! one endpoint. So each worker counts what it sends, in one shared-data value (a u32 per
//! configured endpoint, in config order): a request adds one where it goes, and the
//! streams that ended since are taken off in the same write (or by the worker's timer when
//! it routes nothing), so that a request costs one write, not two. The scraper notes the
//! count as it reads each metrics page; scorers add what was sent since
//! (`Candidate::pending`), so a count that leaked (a lost update) cancels out.
//!
//! One value for the whole pool: a decision reads it with one host call, whatever the
//! pool's size (a gauge per endpoint cost a host call per endpoint per request).

use crate::shared::{self, SharedStore};

pub const KEY: &str = crate::names::keys::IN_FLIGHT;

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

/// Counts a request that starts at `started` (if any) and takes off `ended[i]` requests
/// that ended at endpoint `i`, in one write (never below zero). `seen`, a snapshot this
/// worker just read, saves a read if no one wrote since. False if the write kept losing
/// races (the caller keeps its ended counts for the next write).
pub fn apply(store: &dyn SharedStore, seen: Option<Snapshot>, started: Option<usize>, ended: &[u32]) -> bool {
    let seen = seen.filter(|s| s.cas != 0).map(|s| (s.bytes, s.cas));
    let changed = |bytes: &[u8]| {
        let mut counts = shared::decode_u32s(bytes);
        let len = counts.len().max(started.map_or(0, |i| i + 1)).max(ended.len());
        counts.resize(len, 0);
        for (count, &gone) in counts.iter_mut().zip(ended) {
            *count = count.saturating_sub(gone);
        }
        if let Some(i) = started {
            counts[i] = counts[i].saturating_add(1);
        }
        Some(shared::encode_u32s(&counts))
    };
    let written = shared::update(store, KEY, ATTEMPTS, seen, changed);
    if !written {
        log::warn!("wasm-epp: in-flight counts not updated: shared data kept changing");
    }
    written
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
        assert!(apply(&store, None, Some(3), &[]));
        apply(&store, Some(Snapshot::read(&store)), Some(3), &[]);
        apply(&store, None, Some(0), &[]);
        let s = Snapshot::read(&store);
        assert_eq!((s.get(0), s.get(1), s.get(3)), (1, 0, 2));
        // One write: a start at 0, and ends at 1 (none there), 3 and 0.
        apply(&store, None, Some(0), &[1, 1, 0, 1]);
        let s = Snapshot::read(&store);
        assert_eq!((s.get(0), s.get(1), s.get(3)), (1, 0, 1), "never below zero");
        apply(&store, None, None, &[1, 0, 0, 1]);
        assert_eq!(Snapshot::read(&store), Snapshot { bytes: vec![0; 16], cas: 5 });
    }

    #[test]
    fn a_stale_snapshot_does_not_lose_another_workers_count() {
        let store = MemoryStore::default();
        apply(&store, None, Some(0), &[]);
        let mine = Snapshot::read(&store);
        apply(&store, None, Some(1), &[]); // another worker, after my read
        apply(&store, Some(mine), Some(0), &[]);
        let s = Snapshot::read(&store);
        assert_eq!((s.get(0), s.get(1)), (2, 1));
    }
}
