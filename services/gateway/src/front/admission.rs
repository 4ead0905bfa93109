//! Admission: a concurrency limit per method class, and a token bucket per API key. A call
//! beyond either is refused at once with a retry pushback — never queued — so that an
//! overloaded gateway answers "busy" in microseconds and the calls it did admit keep their
//! latency.
//!
//! Why not tower's `ConcurrencyLimit` + `LoadShed`: they limit a whole service, while here
//! each method class of the one `quarry.v1.Quarry` service has its own limit, and a refusal
//! must carry a pushback; so each class is a semaphore taken with `try_acquire`, and the
//! permit rides on the response body until the call ends.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Shortest and longest pushback a refused call is given.
const MIN_PUSHBACK: Duration = Duration::from_millis(10);
const MAX_PUSHBACK: Duration = Duration::from_secs(10);

/// One method class's limit, and how long its calls have recently taken.
pub struct Gate {
    slots: Arc<Semaphore>,
    /// Exponentially weighted mean of admitted calls' durations, in µs.
    mean_us: AtomicU64,
}

impl Gate {
    pub fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit.max(1))),
            mean_us: AtomicU64::new(0),
        }
    }

    /// A slot, or `None` when every slot is taken.
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// Adds one finished call's duration to the mean (weight 1/16).
    pub fn observe(&self, duration: Duration) {
        let sample = duration.as_micros().min(u128::from(u64::MAX)) as u64;
        let _ = self
            .mean_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(if mean == 0 {
                    sample
                } else {
                    mean - mean / 16 + sample / 16
                })
            });
    }

    /// When a refused caller should try again: about one call's duration, when a slot has
    /// likely come free.
    pub fn pushback(&self) -> Duration {
        Duration::from_micros(self.mean_us.load(Ordering::Relaxed))
            .clamp(MIN_PUSHBACK, MAX_PUSHBACK)
    }
}

/// A token bucket per API key id. Its state is bounded by the number of keys: only ids of
/// keys that verified are ever entered, and ids of removed keys are forgotten on `retain`.
pub struct KeyRates {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl KeyRates {
    /// `None` when `per_second` is 0 (no limit).
    pub fn new(per_second: f64, burst: u32) -> Option<Self> {
        if per_second <= 0.0 {
            return None;
        }
        let period = Duration::from_secs_f64(1.0 / per_second);
        let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?);
        Some(Self {
            limiter: RateLimiter::keyed(quota),
        })
    }

    /// `Err(pushback)` when the key has spent its calls for now.
    pub fn check(&self, key_id: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&key_id.to_string())
            .map_err(|not_until| {
                not_until
                    .wait_time_from(DefaultClock::default().now())
                    .clamp(MIN_PUSHBACK, MAX_PUSHBACK)
            })
    }

    /// Forgets buckets that are full again (keys idle long enough).
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_gate_refuses_until_a_slot_is_returned() {
        let gate = Gate::new(2);
        let first = gate.try_admit().unwrap();
        let _second = gate.try_admit().unwrap();
        assert!(gate.try_admit().is_none());
        drop(first);
        assert!(gate.try_admit().is_some());
    }

    #[test]
    fn pushback_follows_the_calls_durations_within_bounds() {
        let gate = Gate::new(1);
        assert_eq!(gate.pushback(), MIN_PUSHBACK);
        for _ in 0..64 {
            gate.observe(Duration::from_millis(200));
        }
        assert_eq!(gate.pushback(), Duration::from_millis(200));
        for _ in 0..64 {
            gate.observe(Duration::from_secs(60));
        }
        assert_eq!(gate.pushback(), MAX_PUSHBACK);
    }

    #[test]
    fn a_key_beyond_its_burst_is_refused_and_other_keys_are_not() {
        let rates = KeyRates::new(1.0, 3).unwrap();
        for _ in 0..3 {
            assert!(rates.check("a").is_ok());
        }
        let pushback = rates.check("a").unwrap_err();
        assert!(pushback > Duration::from_millis(500), "{pushback:?}");
        assert!(rates.check("b").is_ok());
        assert!(KeyRates::new(0.0, 3).is_none());
    }
}
