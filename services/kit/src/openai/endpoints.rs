//! `EndpointPool`: the configured base URLs, handed out round-robin; one that fails is
//! ejected for a while, and when every one is ejected the one whose ejection ends first is
//! tried anyway rather than failing without an attempt.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

#[derive(Debug)]
pub struct EndpointPool {
    base_urls: Vec<String>,
    /// Per base URL: until when it is left out.
    ejected_until: Mutex<Vec<Option<Instant>>>,
    next: AtomicUsize,
    eject_for: Duration,
}

impl EndpointPool {
    /// `base_urls` must not be empty (config validation guarantees it); trailing `/` are cut.
    pub fn new(base_urls: &[String], eject_for: Duration) -> Self {
        let base_urls: Vec<String> = base_urls
            .iter()
            .map(|url| url.trim().trim_end_matches('/').to_string())
            .collect();
        let ejected_until = Mutex::new(vec![None; base_urls.len()]);
        Self {
            base_urls,
            ejected_until,
            next: AtomicUsize::new(0),
            eject_for,
        }
    }

    /// The index and base URL of the next endpoint to try, or `None` when there are none.
    pub fn pick(&self) -> Option<(usize, &str)> {
        let count = self.base_urls.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let ejected = self
            .ejected_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let live = (0..count)
            .map(|offset| (start + offset) % count)
            .find(|index| ejected[*index].is_none_or(|until| until <= now));
        let chosen = live.unwrap_or_else(|| {
            (0..count)
                .min_by_key(|index| ejected[*index])
                .unwrap_or(start % count)
        });
        Some((chosen, self.base_urls[chosen].as_str()))
    }

    /// Leaves endpoint `index` out of the rotation for the ejection period.
    pub fn eject(&self, index: usize, reason: &str) {
        let mut ejected = self
            .ejected_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = ejected.get_mut(index) {
            *slot = Some(Instant::now() + self.eject_for);
            warn!(
                base_url = %self.base_urls[index],
                eject_ms = self.eject_for.as_millis() as u64,
                reason,
                "model backend ejected"
            );
        }
    }

    /// Puts endpoint `index` back into the rotation (it just answered).
    pub fn restore(&self, index: usize) {
        let mut ejected = self
            .ejected_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = ejected.get_mut(index) {
            *slot = None;
        }
    }

    /// Whether endpoint `index` is ejected right now.
    pub fn is_ejected(&self, index: usize) -> bool {
        let ejected = self
            .ejected_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ejected
            .get(index)
            .copied()
            .flatten()
            .is_some_and(|until| until > Instant::now())
    }

    pub fn base_urls(&self) -> &[String] {
        &self.base_urls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(eject_ms: u64) -> EndpointPool {
        let urls = vec!["http://a/v1/".to_string(), "http://b/v1".to_string()];
        EndpointPool::new(&urls, Duration::from_millis(eject_ms))
    }

    #[test]
    fn alternates_and_skips_an_ejected_endpoint_until_its_time_is_up() {
        let endpoints = pool(50);
        let first: Vec<&str> = (0..4).map(|_| endpoints.pick().unwrap().1).collect();
        assert_eq!(
            first,
            ["http://a/v1", "http://b/v1", "http://a/v1", "http://b/v1"]
        );
        endpoints.eject(0, "test");
        assert!(endpoints.is_ejected(0));
        for _ in 0..4 {
            assert_eq!(endpoints.pick().unwrap().1, "http://b/v1");
        }
        std::thread::sleep(Duration::from_millis(60));
        assert!(!endpoints.is_ejected(0));
        let again: Vec<usize> = (0..2).map(|_| endpoints.pick().unwrap().0).collect();
        assert!(again.contains(&0));
    }

    #[test]
    fn with_every_endpoint_ejected_the_soonest_back_is_tried() {
        let endpoints = pool(10_000);
        endpoints.eject(1, "test");
        std::thread::sleep(Duration::from_millis(5));
        endpoints.eject(0, "test");
        assert_eq!(endpoints.pick().unwrap().0, 1);
        endpoints.restore(0);
        assert_eq!(endpoints.pick().unwrap().0, 0);
    }
}
