//! This proxy's requests in flight to each endpoint, shared by all its workers.
//!
//! Between two scrapes every decision sees the same queue lengths: a burst would land on
//! one endpoint. So each worker counts what it sends, in one shared-data value (a u32 per
//! configured endpoint, in config order): a request adds one where it goes, and the
//! streams that ended since are taken off in the same write (or by the worker's timer when
//! it routes nothing), so that a request costs one write, not two, and a busy worker one
//! read and one write a millisecond (`Ledger`). The scraper notes the
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

/// The counts as the scraper read them on its recent ticks. A row another replica scraped
/// a round ago is paired with this proxy's count at that moment, not at its arrival: what
/// this proxy sent in between is not in the row's queue and counts as pending.
#[derive(Debug, Default)]
pub struct History {
    /// (millisecond read, counts), oldest first.
    reads: std::collections::VecDeque<(u64, Snapshot)>,
}

impl History {
    /// Kept back this far: a shared row older than this is not trusted anyway.
    const KEEP_MS: u64 = 1_000;

    pub fn record(&mut self, now_ms: u64, counts: Snapshot) {
        while self.reads.front().is_some_and(|(at, _)| at + Self::KEEP_MS < now_ms) {
            self.reads.pop_front();
        }
        self.reads.push_back((now_ms, counts));
    }

    /// The count of the endpoint at `index` as read nearest to `at_ms`, or as `now` reads
    /// it if nothing was read (only then: reading the counts is a host call).
    pub fn count_at(&self, index: usize, at_ms: u64, now: impl FnOnce() -> Snapshot) -> i64 {
        match self.reads.iter().min_by_key(|(read, _)| read.abs_diff(at_ms)) {
            Some((_, counts)) => counts.get(index),
            None => now().get(index),
        }
    }
}

/// Counts `started[i]` requests sent to endpoint `i` and takes off `ended[i]` that ended
/// there, in one write (never below zero). `seen`, a snapshot this worker just read,
/// saves a read if no one wrote since. The counts written, or `None` if the write kept
/// losing races (the caller keeps its counts for the next write).
pub fn apply(store: &dyn SharedStore, seen: Option<Snapshot>, started: &[u32], ended: &[u32]) -> Option<Vec<u8>> {
    let seen = seen.filter(|s| s.cas != 0).map(|s| (s.bytes, s.cas));
    let mut written = None;
    let changed = |bytes: &[u8]| {
        let mut counts = store::decode_u32s(bytes);
        counts.resize(counts.len().max(started.len()).max(ended.len()), 0);
        for (i, count) in counts.iter_mut().enumerate() {
            let gone = ended.get(i).copied().unwrap_or(0);
            *count = count.saturating_sub(gone).saturating_add(started.get(i).copied().unwrap_or(0));
        }
        let new = store::encode_u32s(&counts);
        written = Some(new.clone());
        Some(new)
    };
    if !store::update(store, KEY, ATTEMPTS, seen, changed) {
        log::warn!("wasm-epp: in-flight counts not updated: shared data kept changing");
        return None;
    }
    written
}

/// One worker's side of the counts. What it sent and what ended since its last write
/// wait here for the next one, and decisions within one millisecond share one read: a
/// worker routing one request a millisecond or fewer reads and writes for each, as
/// before; one routing thousands a second reads and writes once a millisecond (each host
/// call costs about a microsecond in Envoy's V8), and its own sends count at once in its
/// own decisions, the other workers' at most a millisecond late.
#[derive(Debug, Default)]
pub struct Ledger {
    started: Vec<u32>,
    ended: Vec<u32>,
    /// The counts as last read (or written), and the millisecond of that read.
    read: Option<(Snapshot, u64)>,
    /// The millisecond of this worker's last write.
    wrote_ms: Option<u64>,
}

/// Slots beyond the largest pool this module follows are not counted.
const MAX_SLOTS: usize = crate::discovery::MAX_HOSTS;

fn bump(counts: &mut Vec<u32>, slot: usize) {
    if slot < MAX_SLOTS && counts.len() <= slot {
        counts.resize(slot + 1, 0);
    }
    if let Some(n) = counts.get_mut(slot) {
        *n = n.saturating_add(1);
    }
}

impl Ledger {
    pub fn new(slots: usize) -> Ledger {
        let slots = slots.min(MAX_SLOTS);
        Ledger { started: vec![0; slots], ended: vec![0; slots], read: None, wrote_ms: None }
    }

    /// The counts a decision at `now_ms` sees: what every worker has written, with this
    /// worker's sends and ended streams not yet written.
    pub fn view(&mut self, store: &dyn SharedStore, now_ms: u64) -> View<'_> {
        if !matches!(self.read, Some((_, at)) if at == now_ms) {
            self.read = Some((Snapshot::read(store), now_ms));
        }
        let counts = self.read.as_ref().map(|(s, _)| s);
        View { counts, started: &self.started, ended: &self.ended }
    }

    /// A request is sent to `slot`: written with everything waiting, unless this worker
    /// already wrote in this millisecond (then the next write carries it).
    pub fn sent(&mut self, store: &dyn SharedStore, slot: usize, now_ms: u64) {
        bump(&mut self.started, slot);
        if self.wrote_ms != Some(now_ms) {
            self.write(store, now_ms);
        }
    }

    /// A stream this worker counted ended (answered, failed or cancelled).
    pub fn ended(&mut self, slot: usize) {
        bump(&mut self.ended, slot);
    }

    /// Writes what waits, if anything: the timer's job for a worker that routes nothing
    /// for a while.
    pub fn flush(&mut self, store: &dyn SharedStore, now_ms: u64) {
        if self.started.iter().chain(&self.ended).any(|&n| n > 0) {
            self.write(store, now_ms);
        }
    }

    fn write(&mut self, store: &dyn SharedStore, now_ms: u64) {
        let seen = self.read.take().map(|(s, _)| s);
        self.wrote_ms = Some(now_ms);
        if let Some(bytes) = apply(store, seen, &self.started, &self.ended) {
            self.started.fill(0);
            self.ended.fill(0);
            // What was written is what this worker's next decisions in the same
            // millisecond see; its version is unknown (0), so the next write reads first.
            self.read = Some((Snapshot { bytes, cas: 0 }, now_ms));
        }
    }
}

/// The counts as one decision sees them (`Ledger::view`).
pub struct View<'a> {
    counts: Option<&'a Snapshot>,
    started: &'a [u32],
    ended: &'a [u32],
}

impl View<'_> {
    /// Requests in flight to the endpoint in `slot` now.
    pub fn get(&self, slot: usize) -> i64 {
        let mine = |v: &[u32]| i64::from(v.get(slot).copied().unwrap_or(0));
        (self.counts.map_or(0, |c| c.get(slot)) + mine(self.started) - mine(self.ended)).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CountingStore, MemoryStore};
    use crate::test;

    #[test]
    fn a_peer_row_meets_the_count_read_nearest_its_scrape() {
        let counts = |c: u32| Snapshot { bytes: [0u32, c].iter().flat_map(|c| c.to_le_bytes()).collect(), cas: 1 };
        let mut h = History::default();
        assert_eq!(h.count_at(1, 100, || counts(9)), 9, "nothing read yet: now's");
        for (at, c) in [(1_000, 1), (1_050, 2), (1_100, 5)] {
            h.record(at, counts(c));
        }
        assert_eq!(h.count_at(1, 1_040, || counts(9)), 2);
        assert_eq!(h.count_at(1, 1_010, || counts(9)), 1);
        assert_eq!(h.count_at(1, 5_000, || counts(9)), 5, "newer than every read: the last");
        assert_eq!(h.count_at(0, 1_040, || counts(9)), 0);
        // Reads older than a second go.
        h.record(2_060, counts(7));
        assert_eq!(h.count_at(1, 1_000, || counts(9)), 5);
    }

    #[test]
    fn counts_up_and_down_per_endpoint() {
        let store = MemoryStore::default();
        assert_eq!(Snapshot::read(&store).get(3), 0, "nothing counted yet");
        assert!(apply(&store, None, &[0, 0, 0, 1], &[]).is_some());
        apply(&store, Some(Snapshot::read(&store)), &[0, 0, 0, 1], &[]);
        apply(&store, None, &[1], &[]);
        let s = Snapshot::read(&store);
        assert_eq!((s.get(0), s.get(1), s.get(3)), (1, 0, 2));
        // One write: a start at 0, and ends at 1 (none there), 3 and 0.
        let written = apply(&store, None, &[1], &[1, 1, 0, 1]);
        let s = Snapshot::read(&store);
        assert_eq!((s.get(0), s.get(1), s.get(3)), (1, 0, 1), "never below zero");
        assert_eq!(written, Some(s.bytes.clone()), "what was written is what is stored");
        apply(&store, None, &[], &[1, 0, 0, 1]);
        assert_eq!(Snapshot::read(&store), Snapshot { bytes: vec![0; 16], cas: 5 });
    }

    #[test]
    fn a_ledger_takes_its_ended_streams_off_with_its_next_send() {
        let store = MemoryStore::default();
        let (mut a, mut b) = (Ledger::new(2), Ledger::new(2));
        a.view(&store, 1);
        a.sent(&store, 0, 1);
        b.view(&store, 1);
        b.sent(&store, 0, 1);
        a.ended(0);
        assert_eq!(a.view(&store, 2).get(0), 1, "its own ended stream is off at once");
        assert_eq!(b.view(&store, 2).get(0), 2, "the others see it with a's next write");
        a.sent(&store, 1, 2);
        assert_eq!((b.view(&store, 3).get(0), b.view(&store, 3).get(1)), (1, 1), "one write did both");
        b.ended(0);
        b.ended(7); // a slot past the pool's end grows the ledger, not the counts yet
        b.flush(&store, 3);
        assert_eq!((a.view(&store, 4).get(0), a.view(&store, 4).get(7)), (0, 0));
    }

    #[test]
    fn a_busy_worker_reads_and_writes_once_a_millisecond() {
        let store = CountingStore::default();
        let (mut busy, mut other) = (Ledger::new(3), Ledger::new(3));
        for slot in [0, 1, 0, 2, 0] {
            let seen = busy.view(&store, 10).get(0);
            busy.sent(&store, slot, 10);
            assert_eq!(busy.view(&store, 10).get(0), seen + i64::from(slot == 0), "its own send counts at once");
        }
        let (gets, sets) = store.calls.get();
        assert!(gets <= 2 && sets == 1, "five sends in one millisecond: {gets} reads, {sets} write");
        assert_eq!(other.view(&store, 10).get(0), 1, "the others see the first send's write");
        busy.view(&store, 11);
        busy.sent(&store, 1, 11);
        let v = other.view(&store, 11);
        assert_eq!((v.get(0), v.get(1), v.get(2)), (3, 2, 1), "the next millisecond's write carries the rest");
        // A burst, then nothing: the timer writes what waits.
        busy.sent(&store, 2, 11);
        busy.flush(&store, 31);
        assert_eq!(other.view(&store, 31).get(2), 2);
        let calls = store.calls.get();
        busy.flush(&store, 51);
        assert_eq!(store.calls.get(), calls, "nothing waiting, nothing written");
    }

    #[test]
    fn a_stale_snapshot_does_not_lose_another_workers_count() {
        let store = MemoryStore::default();
        apply(&store, None, &[1], &[]);
        let mine = Snapshot::read(&store);
        apply(&store, None, &[0, 1], &[]); // another worker, after my read
        apply(&store, Some(mine), &[1], &[]);
        let s = Snapshot::read(&store);
        assert_eq!((s.get(0), s.get(1)), (2, 1));
    }
}
