//! One scraper per proxy, elected through a lease in shared data.
//!
//! Where the platform can declare no singleton VM (Istio's `WasmPlugin`, Envoy Gateway's
//! `EnvoyExtensionPolicy`), the worker VMs of one Envoy choose one of themselves: whoever
//! holds the lease scrapes, the others only read the table. The holder renews it on its
//! tick; if it stops ticking (its VM was reloaded or failed), the lease runs out and the
//! next worker to tick takes it. A singleton scraper is just a holder that claims the
//! lease when it starts.
//!
//! The value is 16 bytes: the holder's id and the expiry (ms since the epoch), little
//! endian. Shared data has compare-and-swap but no create-if-absent, so a VM that writes
//! itself in only holds the lease once a later read shows it there: two VMs that take an
//! empty lease at once settle on the one whose write came last.

use crate::store::SharedStore;

pub const KEY: &str = crate::names::keys::SCRAPER_LEASE;

/// What a tick changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// This VM holds the lease from now on: start scraping.
    Gained,
    /// Another VM holds it now: stop scraping.
    Lost,
    /// As before.
    Same,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    holder: u64,
    expires_ms: u64,
}

impl Record {
    fn decode(bytes: &[u8]) -> Option<Record> {
        let word = |at: usize| bytes.get(at..at + 8)?.try_into().ok().map(u64::from_le_bytes);
        Some(Record { holder: word(0)?, expires_ms: word(8)? })
    }

    fn encode(self) -> Vec<u8> {
        let mut out = self.holder.to_le_bytes().to_vec();
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
        out
    }
}

pub struct Lease {
    /// This VM's id: random, so that a reloaded VM is a new candidate.
    id: u64,
    term_ms: u64,
    held: bool,
    /// This VM wrote a bid for a lease that had run out; the next tick reads who won.
    bidding: bool,
}

impl Lease {
    pub fn new(id: u64, term_ms: u64) -> Self {
        Lease { id, term_ms, held: false, bidding: false }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Whether the last tick bid for a free lease: whoever bids wants to know soon
    /// whether it won.
    pub fn is_bidding(&self) -> bool {
        self.bidding
    }

    /// Writes this VM in, whoever holds the lease: the singleton scraper does at start,
    /// so that a worker that took the lease first hands it over.
    pub fn claim(&mut self, store: &dyn SharedStore, now_ms: u64) {
        let record = Record { holder: self.id, expires_ms: now_ms.saturating_add(self.term_ms) };
        store.set(KEY, &record.encode(), 0);
    }

    /// Renews the lease if this VM holds it, bids for it if it has run out.
    pub fn tick(&mut self, store: &dyn SharedStore, now_ms: u64) -> Change {
        let (bytes, cas) = store.get(KEY).unwrap_or_default();
        let current = Record::decode(&bytes);
        let mine = current.is_some_and(|r| r.holder == self.id && r.expires_ms > now_ms);
        let free = current.is_none_or(|r| r.expires_ms <= now_ms);
        if mine || free {
            let record = Record { holder: self.id, expires_ms: now_ms.saturating_add(self.term_ms) };
            // A lost race leaves the record to the winner; the next tick reads who it is.
            store.set(KEY, &record.encode(), cas);
        }
        self.bidding = free && !mine;
        let was = std::mem::replace(&mut self.held, mine);
        match (was, mine) {
            (false, true) => Change::Gained,
            (true, false) => Change::Lost,
            _ => Change::Same,
        }
    }

    /// Gives the lease up (the plugin is being removed), so that a successor need not wait
    /// for it to run out.
    pub fn release(&mut self, store: &dyn SharedStore) {
        let (bytes, cas) = store.get(KEY).unwrap_or_default();
        if Record::decode(&bytes).is_some_and(|r| r.holder == self.id) {
            store.set(KEY, &Record { holder: self.id, expires_ms: 0 }.encode(), cas);
        }
        self.held = false;
    }
}

/// Who holds the lease and until when, for tests and tools: `None` if nobody ever took it.
pub fn holder(store: &dyn SharedStore) -> Option<(u64, u64)> {
    let (bytes, _) = store.get(KEY)?;
    Record::decode(&bytes).map(|r| (r.holder, r.expires_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::test;

    #[test]
    fn one_of_several_takes_it_and_keeps_it() {
        let store = MemoryStore::default();
        let mut workers: Vec<Lease> = (1..=4).map(|id| Lease::new(id, 1000)).collect();
        // Round 1: the first to tick bids for the empty lease; the others see its bid.
        for w in &mut workers {
            assert_eq!(w.tick(&store, 0), Change::Same, "nobody holds it on a bid alone");
        }
        let bidding: Vec<bool> = workers.iter().map(Lease::is_bidding).collect();
        assert_eq!(bidding, [true, false, false, false], "the first bid; the others found it taken");
        // Round 2: the bidder finds itself there.
        let changes: Vec<Change> = workers.iter_mut().map(|w| w.tick(&store, 20)).collect();
        assert_eq!(changes, [Change::Gained, Change::Same, Change::Same, Change::Same]);
        assert!(workers.iter().all(|w| !w.is_bidding()), "a holder renews; it does not bid");
        assert_eq!(holder(&store).map(|h| h.0), Some(1));
        for t in (40..5000).step_by(20) {
            for w in &mut workers {
                w.tick(&store, t);
            }
            assert_eq!(workers.iter().filter(|w| w.is_held()).count(), 1, "at {t}");
            assert!(workers[0].is_held(), "the holder renews it on its tick");
        }
    }

    #[test]
    fn two_blind_bids_settle_on_the_last_write() {
        // Envoy's workers run at once: both read an empty lease, both write with no CAS.
        let store = MemoryStore::default();
        let (mut a, mut b) = (Lease::new(1, 1000), Lease::new(2, 1000));
        a.tick(&store, 0);
        store.set(KEY, &Record { holder: 2, expires_ms: 1000 }.encode(), 0); // b's bid, after a's
        assert_eq!(a.tick(&store, 20), Change::Same, "a never held it");
        assert_eq!(b.tick(&store, 20), Change::Gained);
    }

    #[test]
    fn a_holder_that_stops_ticking_is_replaced_within_the_term() {
        let store = MemoryStore::default();
        let mut a = Lease::new(1, 1000);
        let mut b = Lease::new(2, 1000);
        a.tick(&store, 0);
        assert_eq!(a.tick(&store, 20), Change::Gained);
        b.tick(&store, 20);
        assert!(!b.is_held());
        // `a` stops at 20 (its VM was reloaded); `b` bids once the lease has run out.
        let mut taken = None;
        for t in (40..3000).step_by(20) {
            if b.tick(&store, t) == Change::Gained {
                taken = Some(t);
                break;
            }
        }
        let taken = taken.expect("b takes over");
        assert!(taken <= 20 + 1000 + 40, "taken over at {taken} ms");
        // `a` comes back: it finds `b` there and stands down.
        assert_eq!(a.tick(&store, taken + 20), Change::Lost);
        assert!(b.is_held());
    }

    #[test]
    fn a_claim_hands_over_and_a_release_frees_it_at_once() {
        let store = MemoryStore::default();
        let mut worker = Lease::new(1, 1000);
        worker.tick(&store, 0);
        assert_eq!(worker.tick(&store, 20), Change::Gained);
        let mut singleton = Lease::new(9, 1000);
        singleton.claim(&store, 30);
        assert_eq!(singleton.tick(&store, 50), Change::Gained);
        assert_eq!(worker.tick(&store, 60), Change::Lost);
        singleton.release(&store);
        worker.tick(&store, 80);
        assert_eq!(worker.tick(&store, 100), Change::Gained, "no wait for the term to run out");
    }

    #[test]
    fn garbage_in_the_key_counts_as_free() {
        let store = MemoryStore::default();
        store.set(KEY, b"junk", 0);
        let mut w = Lease::new(3, 1000);
        w.tick(&store, 0);
        assert_eq!(w.tick(&store, 20), Change::Gained);
    }
}
