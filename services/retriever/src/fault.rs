//! A delay injected into a share of a replica's searches, for tests and benchmarks of tail
//! latency (`retriever.fault`). The module exists only with the `fault-injection` feature,
//! so a production build has no such hook.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use xxhash_rust::xxh3::xxh3_64;

/// A delay added to a share of searches, for tests and benchmarks of tail latency. Only in
/// builds with the `fault-injection` feature (tests and `make bench`), never in a release.
pub struct InjectedFault {
    pub delay: Duration,
    pub rate: f64,
    calls: AtomicU64,
}

impl InjectedFault {
    pub fn new(delay: Duration, rate: f64) -> Self {
        Self {
            delay,
            rate: rate.clamp(0.0, 1.0),
            calls: AtomicU64::new(0),
        }
    }

    /// Whether this call is delayed: a hash of the call's number, so the share is exact
    /// over many calls and the same in every run.
    pub(crate) fn hits(&self) -> bool {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let draw = xxh3_64(&call.to_le_bytes()) as f64 / u64::MAX as f64;
        draw < self.rate
    }
}
