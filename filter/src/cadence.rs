//! How often a picker VM's timer fires. Its tick hands the worker's ended streams to the
//! shared in-flight counts, bids for the scraper lease (or renews it) and, while it holds
//! the lease, scrapes. Only scraping needs the tick all the time: a VM that neither
//! scrapes nor sees traffic (Envoy runs two such on its main thread, and every idle worker
//! is one) ticks slowly, often enough to bid for a lease that ran out, and the first
//! stream it sees makes it fast again. It turns slow only after a slow period's worth of
//! quiet fast ticks, so that steady traffic, however light, never flips it. An idle Envoy
//! with one worker spent 34 ms of CPU a second, most of it waking three VMs 50 times a
//! second each (docs/experiments.md).

/// How long a worker that routes nothing keeps its ended streams in the in-flight counts.
const FAST_MS: u64 = 20;

/// Slow ticks come this many times a lease term: a lease that ran out is taken within a
/// quarter of a term (250 ms by default) by an idle VM, within `FAST_MS` by a busy one.
const SLOW_TICKS_PER_LEASE: u64 = 4;

#[derive(Debug)]
pub struct Cadence {
    fast_ms: u64,
    slow_ms: u64,
    fast: bool,
    /// Fast ticks in a row that found nothing to do.
    quiet: u64,
    /// A stream started or ended since the last tick.
    woken: bool,
}

impl Cadence {
    /// Starts fast (`FAST_MS`, or the scrape interval if shorter), so that a new VM bids
    /// for the lease and takes its first streams at once.
    pub fn new(scrape_interval_ms: u64, lease_ms: u64) -> Self {
        let fast_ms = FAST_MS.min(scrape_interval_ms).max(1);
        let slow_ms = (lease_ms / SLOW_TICKS_PER_LEASE).max(fast_ms);
        Cadence { fast_ms, slow_ms, fast: true, quiet: 0, woken: false }
    }

    pub fn period_ms(&self) -> u64 {
        if self.fast {
            self.fast_ms
        } else {
            self.slow_ms
        }
    }

    /// After a tick: the period the timer should have from now on, if it changes. Busy if
    /// `scraper_busy` (the VM scrapes or has just bid for the lease) or a stream started
    /// or ended since the tick before (`woken`).
    pub fn after_tick(&mut self, scraper_busy: bool) -> Option<u64> {
        if std::mem::take(&mut self.woken) | scraper_busy {
            self.quiet = 0;
            return self.set(true);
        }
        self.quiet = self.quiet.saturating_add(1);
        if self.fast && self.quiet.saturating_mul(self.fast_ms) < self.slow_ms {
            return None;
        }
        self.set(false)
    }

    /// A stream started or ended on this worker: the fast period, if the timer was slow.
    /// The next tick counts as busy.
    pub fn woken(&mut self) -> Option<u64> {
        self.woken = true;
        self.quiet = 0;
        self.set(true)
    }

    fn set(&mut self, fast: bool) -> Option<u64> {
        let changed = self.fast != fast && self.fast_ms != self.slow_ms;
        self.fast = fast;
        changed.then(|| self.period_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test;

    #[test]
    fn fast_while_busy_slow_after_a_quiet_spell_and_woken_by_a_stream() {
        let mut c = Cadence::new(50, 1000);
        assert_eq!(c.period_ms(), 20, "starts fast");
        assert_eq!(c.after_tick(true), None, "busy: stays fast, no host call");
        let quiet = |c: &mut Cadence| (1..100).find(|_| c.after_tick(false).is_some()).unwrap_or(0);
        assert_eq!(quiet(&mut c), 13, "slow once 250 ms of fast ticks found nothing");
        assert_eq!(c.period_ms(), 250, "a quarter of the lease");
        assert_eq!(c.after_tick(false), None);
        assert_eq!(c.woken(), Some(20), "a stream: fast at once");
        assert_eq!(c.woken(), None, "already fast: nothing to change");
        for _ in 0..12 {
            assert_eq!(c.after_tick(false), None, "light traffic keeps it fast");
        }
        assert_eq!(c.woken(), None);
        assert_eq!(c.after_tick(false), None, "a stream since the last tick: that tick was busy");
        assert_eq!(quiet(&mut c), 13, "each stream starts the quiet count again");
    }

    #[test]
    fn a_short_scrape_interval_or_lease_bounds_the_periods() {
        let c = Cadence::new(5, 1000);
        assert_eq!(c.period_ms(), 5, "a scraper that scrapes every 5 ms ticks every 5 ms");
        let mut c = Cadence::new(50, 40);
        assert_eq!(c.after_tick(false), None, "a lease of 40 ms: slow would be 10 ms, so it stays at 20");
        assert_eq!(c.period_ms(), 20);
        assert_eq!(Cadence::new(0, 0).period_ms(), 1, "never a zero period, which stops the timer");
    }
}
