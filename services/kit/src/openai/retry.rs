//! `RetryPolicy`: how many attempts a chat call gets and how long it waits between them —
//! exponential backoff with full jitter, or the server's `Retry-After` when it sent one.

use std::time::Duration;

/// Backoff never exceeds this many times the base delay.
const MAX_BACKOFF_FACTOR: u32 = 20;
/// A `Retry-After` longer than this is not waited for: the call fails at once instead of
/// sitting out most of its deadline.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub base_delay: Duration,
    /// Longest wait between attempts, `Retry-After` included.
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn new(max_retries: u32, base_delay: Duration) -> Self {
        Self {
            max_retries,
            base_delay,
            max_delay: base_delay.saturating_mul(MAX_BACKOFF_FACTOR),
        }
    }

    /// The wait before retry number `retry` (1 for the first retry), or `None` to give up
    /// because the server asked for a wait over [`MAX_RETRY_AFTER`]. A server's
    /// `Retry-After` is honoured exactly; otherwise the wait is a uniformly random share of
    /// `base_delay · 2^(retry-1)` (capped at `max_delay`), at least half of it, so that
    /// clients spread out.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if let Some(asked) = retry_after {
            return (asked <= MAX_RETRY_AFTER).then_some(asked);
        }
        let exponent = retry.saturating_sub(1).min(16);
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let jitter = 0.5 + fastrand::f64() * 0.5;
        Some(ceiling.mul_f64(jitter))
    }
}

/// Reads `Retry-After` given in seconds (the HTTP-date form is ignored).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let seconds: f64 = value?.trim().parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(seconds.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let policy = RetryPolicy::new(5, Duration::from_millis(100));
        for _ in 0..50 {
            let first = policy.delay(1, None).unwrap();
            assert!(
                (50..=100).contains(&(first.as_millis() as u64)),
                "{first:?}"
            );
            let third = policy.delay(3, None).unwrap();
            assert!(
                (200..=400).contains(&(third.as_millis() as u64)),
                "{third:?}"
            );
            let late = policy.delay(30, None).unwrap();
            assert!(late <= Duration::from_secs(2), "{late:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_and_a_long_one_gives_up() {
        let policy = RetryPolicy::new(2, Duration::from_millis(100));
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(5))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(policy.delay(1, Some(Duration::from_secs(60))), None);
        assert_eq!(parse_retry_after(Some(" 2 ")), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(Some("0.5")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(Some("-1")), None);
        assert_eq!(parse_retry_after(None), None);
    }
}
