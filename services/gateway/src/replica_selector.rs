//! Which replica of a shard to call, and when to hedge. Replicas are tried in order of
//! fewest outstanding requests, then lowest recent latency (an EWMA), or in turn when
//! configured `round_robin`; a call that outlives
//! the shard's recent p95 latency is hedged on the next replica ("The Tail at Scale"),
//! which by construction adds about 5% more requests.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quarry_kit::config::ReplicaSelection;
use quarry_kit::discovery::Member;

/// Latencies kept per shard for its p95.
const WINDOW: usize = 512;
/// Fewest samples before hedging starts.
const MIN_SAMPLES: usize = 50;
/// Weight of a new latency in the EWMA.
const EWMA_WEIGHT: f64 = 0.2;
/// Shortest hedge delay, so a fast shard is not hedged on noise.
const MIN_HEDGE_DELAY: Duration = Duration::from_millis(2);

#[derive(Default)]
struct ReplicaState {
    outstanding: AtomicU32,
    /// f64 bits of the latency EWMA, in microseconds; 0 before the first sample.
    ewma_micros: AtomicU64,
}

/// Per-replica load and latency, per-shard latency windows.
#[derive(Default)]
pub struct ReplicaSelector {
    selection: ReplicaSelection,
    turn: AtomicU64,
    replicas: Mutex<HashMap<String, Arc<ReplicaState>>>,
    shards: Mutex<HashMap<u32, VecDeque<u64>>>,
}

/// An outstanding call; the count drops when it is dropped.
pub struct InFlight {
    state: Arc<ReplicaState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReplicaSelector {
    pub fn new(selection: ReplicaSelection) -> Self {
        Self {
            selection,
            ..Self::default()
        }
    }

    fn state(&self, address: &str) -> Arc<ReplicaState> {
        let mut replicas = self
            .replicas
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(replicas.entry(address.to_string()).or_default())
    }

    /// The replicas, best first: fewest outstanding requests, then lowest EWMA latency,
    /// then the stable member order.
    pub fn order(&self, mut replicas: Vec<Member>) -> Vec<Member> {
        if self.selection == ReplicaSelection::RoundRobin && !replicas.is_empty() {
            let turn = self.turn.fetch_add(1, Ordering::Relaxed) as usize;
            let count = replicas.len();
            replicas.rotate_left(turn % count);
            return replicas;
        }
        let keys: HashMap<String, (u32, u64)> = replicas
            .iter()
            .map(|member| {
                let state = self.state(&member.address);
                let ewma = f64::from_bits(state.ewma_micros.load(Ordering::Relaxed));
                (
                    member.address.clone(),
                    (state.outstanding.load(Ordering::Relaxed), ewma as u64),
                )
            })
            .collect();
        replicas.sort_by_key(|member| keys.get(&member.address).copied().unwrap_or_default());
        replicas
    }

    /// Counts a call to `address` as outstanding until the guard is dropped.
    pub fn begin(&self, address: &str) -> InFlight {
        let state = self.state(address);
        state.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight { state }
    }

    /// Records a successful call's latency.
    pub fn record(&self, shard: u32, address: &str, latency: Duration) {
        let micros = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        let state = self.state(address);
        let previous = f64::from_bits(state.ewma_micros.load(Ordering::Relaxed));
        let next = if previous == 0.0 {
            micros as f64
        } else {
            previous * (1.0 - EWMA_WEIGHT) + micros as f64 * EWMA_WEIGHT
        };
        state.ewma_micros.store(next.to_bits(), Ordering::Relaxed);
        let mut shards = self
            .shards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let window = shards.entry(shard).or_default();
        if window.len() == WINDOW {
            window.pop_front();
        }
        window.push_back(micros);
    }

    /// How long to wait before hedging a call to `shard`: its recent p95, once known.
    pub fn hedge_delay(&self, shard: u32) -> Option<Duration> {
        let shards = self
            .shards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let window = shards.get(&shard)?;
        if window.len() < MIN_SAMPLES {
            return None;
        }
        let mut sorted: Vec<u64> = window.iter().copied().collect();
        sorted.sort_unstable();
        let p95 = sorted[(sorted.len() * 95).div_ceil(100) - 1];
        Some(Duration::from_micros(p95).max(MIN_HEDGE_DELAY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_kit::discovery::Role;

    fn replica(address: &str) -> Member {
        Member {
            node_id: address.to_string(),
            role: Role::Retriever,
            address: address.to_string(),
            shard: 0,
            replica: 0,
            version: "test".to_string(),
            ready: true,
            recovering: false,
        }
    }

    fn addresses(members: &[Member]) -> Vec<&str> {
        members
            .iter()
            .map(|member| member.address.as_str())
            .collect()
    }

    #[test]
    fn busy_then_slow_replicas_go_last() {
        let selector = ReplicaSelector::default();
        let all = vec![replica("a"), replica("b"), replica("c")];
        assert_eq!(addresses(&selector.order(all.clone())), ["a", "b", "c"]);
        let _busy = selector.begin("a");
        selector.record(0, "b", Duration::from_millis(50));
        selector.record(0, "c", Duration::from_millis(5));
        assert_eq!(addresses(&selector.order(all.clone())), ["c", "b", "a"]);
        drop(_busy);
        assert_eq!(addresses(&selector.order(all)), ["a", "c", "b"]);
    }

    #[test]
    fn round_robin_takes_turns() {
        let selector = ReplicaSelector::new(ReplicaSelection::RoundRobin);
        let all = vec![replica("a"), replica("b")];
        let firsts: Vec<String> = (0..4)
            .map(|_| selector.order(all.clone())[0].address.clone())
            .collect();
        assert_eq!(firsts, ["a", "b", "a", "b"]);
    }

    #[test]
    fn hedging_waits_for_enough_samples_then_uses_the_p95() {
        let selector = ReplicaSelector::default();
        assert_eq!(selector.hedge_delay(0), None);
        for millisecond in 1..=100u64 {
            selector.record(0, "a", Duration::from_millis(millisecond));
        }
        assert_eq!(selector.hedge_delay(0), Some(Duration::from_millis(95)));
        assert_eq!(selector.hedge_delay(1), None);
    }
}
