//! Write versions: a hybrid logical clock (microseconds since the Unix epoch, never going
//! backwards, and moving past every version it has observed). Versions order the writes of
//! one document id across gateways and replicas, last writer wins, as Elasticsearch's
//! external versions or Cassandra's write timestamps do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A hybrid logical clock: `max(now in µs, last + 1)`.
#[derive(Debug, Default)]
pub struct VersionClock {
    last: AtomicU64,
}

impl VersionClock {
    /// The next version, greater than every one this clock issued or observed.
    pub fn next(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_micros() as u64);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(current) => last = current,
            }
        }
    }

    /// Moves the clock past a version seen elsewhere, so later local stamps are newer.
    pub fn observe(&self, version: u64) {
        self.last.fetch_max(version, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_never_repeats_and_moves_past_what_it_observes() {
        let clock = VersionClock::default();
        let first = clock.next();
        assert!(clock.next() > first);
        clock.observe(first + 1_000_000_000);
        assert!(clock.next() > first + 1_000_000_000);
    }
}
