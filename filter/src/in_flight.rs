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

use crate::store::{self, SharedStore};

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
        let mut counts = store::decode_u32s(bytes);
        let len = counts.len().max(started.map_or(0, |i| i + 1)).max(ended.len());
        counts.resize(len, 0);
        for (count, &gone) in counts.iter_mut().zip(ended) {
            *count = count.saturating_sub(gone);
        }
        if let Some(i) = started {
            counts[i] = counts[i].saturating_add(1);
        }
        Some(store::encode_u32s(&counts))
    };
    let written = store::update(store, KEY, ATTEMPTS, seen, changed);
    if !written {
        log::warn!("wasm-epp: in-flight counts not updated: shared data kept changing");
    }
    written
}

/// One worker's side of the counts: the streams it sent that ended and are not yet taken
/// off, carried into its next write so that a request costs one write, not two.
#[derive(Debug, Default)]
pub struct Ledger {
    ended: Vec<u32>,
}

/// Slots beyond the largest pool this module follows are not counted.
const MAX_SLOTS: usize = crate::discovery::MAX_HOSTS;

impl Ledger {
    pub fn new(slots: usize) -> Ledger {
        Ledger { ended: vec![0; slots.min(MAX_SLOTS)] }
    }

    /// The counts a decision sees: what every worker has counted, less this worker's
    /// ended streams not yet written.
    pub fn view(&self, store: &dyn SharedStore) -> View<'_> {
        View { counts: Snapshot::read(store), ended: &self.ended }
    }

    /// A request is sent to `slot`: counted, with this worker's ended streams taken off,
    /// in one write from the counts `seen` at the decision.
    pub fn sent(&mut self, store: &dyn SharedStore, seen: Snapshot, slot: usize) {
        if apply(store, Some(seen), Some(slot), &self.ended) {
            self.ended.fill(0);
        }
    }

    /// A stream this worker counted ended (answered, failed or cancelled).
    pub fn ended(&mut self, slot: usize) {
        if slot < MAX_SLOTS && self.ended.len() <= slot {
            self.ended.resize(slot + 1, 0);
        }
        if let Some(n) = self.ended.get_mut(slot) {
            *n = n.saturating_add(1);
        }
    }

    /// Writes the ended streams if any wait: the timer's job for a worker that routes
    /// nothing for a while.
    pub fn flush(&mut self, store: &dyn SharedStore) {
        if self.ended.iter().any(|&n| n > 0) && apply(store, None, None, &self.ended) {
            self.ended.fill(0);
        }
    }
}

/// The counts as one decision sees them (`Ledger::view`).
pub struct View<'a> {
    counts: Snapshot,
    ended: &'a [u32],
}

impl View<'_> {
    /// Requests in flight to the endpoint in `slot` now.
    pub fn get(&self, slot: usize) -> i64 {
        let mine = i64::from(self.ended.get(slot).copied().unwrap_or(0));
        (self.counts.get(slot) - mine).max(0)
    }

    /// The snapshot read, for the write that follows the decision.
    pub fn into_snapshot(self) -> Snapshot {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::test;

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
    fn a_ledger_takes_its_ended_streams_off_with_its_next_send() {
        let store = MemoryStore::default();
        let (mut a, mut b) = (Ledger::new(2), Ledger::new(2));
        let seen = a.view(&store).into_snapshot();
        a.sent(&store, seen, 0);
        let seen = b.view(&store).into_snapshot();
        b.sent(&store, seen, 0);
        a.ended(0);
        assert_eq!(a.view(&store).get(0), 1, "its own ended stream is off at once");
        assert_eq!(b.view(&store).get(0), 2, "the others see it with a's next write");
        let seen = a.view(&store).into_snapshot();
        a.sent(&store, seen, 1);
        assert_eq!((b.view(&store).get(0), b.view(&store).get(1)), (1, 1), "one write did both");
        b.ended(0);
        b.ended(7); // a slot past the pool's end grows the ledger, not the counts yet
        b.flush(&store);
        assert_eq!((a.view(&store).get(0), a.view(&store).get(7)), (0, 0));
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
