//! Which replica of a shard to call first, and when to hedge.
//!
//! Replicas are chosen by the power of two choices over a peak-EWMA cost, as
//! `tower::balance::p2c` with `PeakEwma` does: two replicas are drawn at random and the one
//! with the lower `latency estimate × (outstanding calls + 1)` goes first. The estimate
//! jumps to any slower sample at once (peak) and otherwise moves toward new samples, and it
//! decays toward zero while no sample arrives — so a replica that stopped receiving traffic
//! becomes cheap again and is probed. A failure counts as a `FAILURE_PENALTY` sample, so a
//! replica that fails fast is never mistaken for a fast one, yet is tried again once the
//! penalty has decayed. tower's `Balance` itself is not used because it hides the choice
//! behind `poll_ready`: a hedge and a retry need the *next* replica, one not tried yet.
//!
//! A call that outlives the recent p95 latency of its (shard, rpc) is hedged ("The Tail at
//! Scale"); windows are per rpc because statistics, search and fetch cost different amounts.
//! State of replicas that left (unused for `FORGET_AFTER`) is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quarry_kit::config::ReplicaSelection;
use quarry_kit::discovery::Member;
use tokio::time::Instant;

use super::Rpc;

/// Latencies kept per (shard, rpc) for its p95.
const WINDOW: usize = 512;
/// Fewest samples before hedging starts.
const MIN_SAMPLES: usize = 50;
/// Shortest hedge delay, so a fast shard is not hedged on noise.
const MIN_HEDGE_DELAY: Duration = Duration::from_millis(2);
/// How fast an estimate forgets (tower's default is 10 s; shards answer in milliseconds).
const DECAY: Duration = Duration::from_secs(5);
/// The estimate of a replica never measured.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// What a failed call counts as: a replica that failed stays last for about half a minute
/// (`DECAY × ln(penalty / healthy latency)`), then is probed again.
pub(crate) const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// A replica unused this long is forgotten (it left the cluster, or will be re-learnt).
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Calls between two sweeps for replicas to forget.
const SWEEP_EVERY: u64 = 1024;

struct Estimate {
    /// Peak-EWMA latency, in microseconds, as of `at`.
    rtt_micros: f64,
    at: Instant,
}

impl Estimate {
    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.rtt_micros * (-elapsed / DECAY.as_secs_f64()).exp()
    }
}

struct ReplicaLoad {
    outstanding: AtomicU32,
    estimate: Mutex<Estimate>,
    last_used: Mutex<Instant>,
}

impl ReplicaLoad {
    fn new(now: Instant) -> Self {
        Self {
            outstanding: AtomicU32::new(0),
            estimate: Mutex::new(Estimate {
                rtt_micros: DEFAULT_RTT.as_micros() as f64,
                at: now,
            }),
            last_used: Mutex::new(now),
        }
    }

    fn cost(&self, now: Instant) -> f64 {
        let estimate = lock(&self.estimate).decayed(now);
        estimate * f64::from(self.outstanding.load(Ordering::Relaxed) + 1)
    }

    fn observe(&self, micros: f64, now: Instant) {
        let mut estimate = lock(&self.estimate);
        let current = estimate.decayed(now);
        let elapsed = now.saturating_duration_since(estimate.at).as_secs_f64();
        estimate.rtt_micros = if micros > current {
            micros
        } else {
            let keep = (-elapsed / DECAY.as_secs_f64()).exp();
            current * keep + micros * (1.0 - keep)
        };
        estimate.at = now;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Per-replica load and latency, per-(shard, rpc) latency windows.
pub struct ReplicaBalancer {
    selection: ReplicaSelection,
    turn: AtomicU64,
    calls: AtomicU64,
    replicas: Mutex<HashMap<String, Arc<ReplicaLoad>>>,
    windows: Mutex<HashMap<(u32, Rpc), VecDeque<u64>>>,
}

/// An outstanding call; the count drops when it is dropped.
pub struct InFlight {
    load: Arc<ReplicaLoad>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReplicaBalancer {
    pub fn new(selection: ReplicaSelection) -> Self {
        Self {
            selection,
            turn: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            replicas: Mutex::new(HashMap::new()),
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn load(&self, address: &str) -> Arc<ReplicaLoad> {
        let mut replicas = lock(&self.replicas);
        Arc::clone(
            replicas
                .entry(address.to_string())
                .or_insert_with(|| Arc::new(ReplicaLoad::new(Instant::now()))),
        )
    }

    /// The replicas in the order to try them: the power-of-two-choices winner, the other
    /// one drawn, then the rest by cost (or in turn, when configured `round_robin`).
    pub fn order(&self, mut replicas: Vec<Member>) -> Vec<Member> {
        if replicas.len() < 2 {
            return replicas;
        }
        if self.selection == ReplicaSelection::RoundRobin {
            let turn = self.turn.fetch_add(1, Ordering::Relaxed) as usize;
            let count = replicas.len();
            replicas.rotate_left(turn % count);
            return replicas;
        }
        let now = Instant::now();
        let costs: Vec<f64> = replicas
            .iter()
            .map(|member| self.load(&member.address).cost(now))
            .collect();
        let first = fastrand::usize(..replicas.len());
        let mut second = fastrand::usize(..replicas.len() - 1);
        if second >= first {
            second += 1;
        }
        let (winner, loser) = if costs[second] < costs[first] {
            (second, first)
        } else {
            (first, second)
        };
        let mut rest: Vec<usize> = (0..replicas.len())
            .filter(|index| *index != winner && *index != loser)
            .collect();
        rest.sort_by(|left, right| costs[*left].total_cmp(&costs[*right]));
        let mut slots: Vec<Option<Member>> = replicas.into_iter().map(Some).collect();
        std::iter::once(winner)
            .chain(std::iter::once(loser))
            .chain(rest)
            .filter_map(|index| slots[index].take())
            .collect()
    }

    /// Counts a call to `address` as outstanding until the guard is dropped.
    pub fn begin(&self, address: &str) -> InFlight {
        if self.calls.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.forget_unused();
        }
        let load = self.load(address);
        *lock(&load.last_used) = Instant::now();
        load.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight { load }
    }

    /// Records a successful call's latency.
    pub fn record_success(&self, shard: u32, rpc: Rpc, address: &str, latency: Duration) {
        let micros = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        self.load(address).observe(micros as f64, Instant::now());
        let mut windows = lock(&self.windows);
        let window = windows.entry((shard, rpc)).or_default();
        if window.len() == WINDOW {
            window.pop_front();
        }
        window.push_back(micros);
    }

    /// Records a failed call: the replica costs as if it had taken `FAILURE_PENALTY`.
    pub fn record_failure(&self, address: &str) {
        self.load(address)
            .observe(FAILURE_PENALTY.as_micros() as f64, Instant::now());
    }

    /// How long to wait before hedging a call of `rpc` to `shard`: its recent p95, once known.
    pub fn hedge_delay(&self, shard: u32, rpc: Rpc) -> Option<Duration> {
        let windows = lock(&self.windows);
        let window = windows.get(&(shard, rpc))?;
        if window.len() < MIN_SAMPLES {
            return None;
        }
        let mut sorted: Vec<u64> = window.iter().copied().collect();
        sorted.sort_unstable();
        let p95 = sorted[(sorted.len() * 95).div_ceil(100) - 1];
        Some(Duration::from_micros(p95).max(MIN_HEDGE_DELAY))
    }

    /// Drops the state of replicas unused for `FORGET_AFTER` with nothing outstanding.
    pub fn forget_unused(&self) {
        let now = Instant::now();
        lock(&self.replicas).retain(|_, load| {
            load.outstanding.load(Ordering::Relaxed) > 0
                || now.saturating_duration_since(*lock(&load.last_used)) < FORGET_AFTER
        });
    }

    /// Replicas with state kept (for tests).
    #[cfg(test)]
    pub fn known_replicas(&self) -> usize {
        lock(&self.replicas).len()
    }
}
