//! Elastic placement: documents map to a fixed number of partitions, partitions are owned by
//! shards, and the owners can change while the cluster serves.
//!
//! *Partitions.* `P = base_shards × per_shard` partitions, fixed when the cluster is created.
//! A document's partition is two-level: `jump(xxh3(id), base_shards)` picks a block of
//! `per_shard` partitions and `jump(xxh3_seeded(id), per_shard)` one within it. Block `s`
//! is what shard `s` held under the earlier fixed layout (`jump(xxh3(id), shards)`), so a
//! cluster made before partitions existed converts in place: each replica splits its one
//! index into its own block's partitions, nothing moves between shards, nothing is
//! re-embedded. `P` bounds the shard count, as Qdrant's shard number or Elasticsearch's
//! routing shards do.
//!
//! *Placement.* One record (`Placement`) says which shard owns each partition and which
//! moves are under way, with an `epoch` that grows with every change of who reads or
//! writes a partition. It lives in etcd (`/quarry/<cluster>/placement`) or in the data
//! directory under `quarry up` (`PlacementStore`). Every query takes one snapshot of it and
//! tells each shard which partitions to answer for; every write names the epoch it was
//! routed at, and a shard refuses one routed before the partition's writers last changed.
//!
//! *A move* of partition `p` from shard `S` to shard `T` (`Phase`):
//! `Planned` → `Importing` (T is written to, not read; S refuses writes routed before) →
//! `Copying` (T copies p from S with versions: ids, versions, tombstones, vectors) →
//! cut-over, one transaction: `owners[p] = T`, `Dropping` (S still answers readers holding an
//! older snapshot, takes no writes) → removed, and S deletes its copy. Until the cut-over a
//! move can be rolled back (T deletes its partial copy); after it, it only rolls forward.

mod etcd;
mod hash;
mod local;
mod plan;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::error::KitError;

pub use etcd::{placement_key, EtcdPlacement};
pub use hash::jump_consistent_hash;
pub use local::LocalPlacement;
pub use plan::plan_moves;

/// Partitions a new cluster has at least (unless told otherwise).
pub const DEFAULT_MIN_PARTITIONS: u32 = 16;
/// Most partitions a cluster may have.
pub const MAX_PARTITIONS: u32 = 4096;
/// The header of a shard's FAILED_PRECONDITION that means "routed by an older placement":
/// its value is the shard's placement epoch; the caller refreshes its placement and retries.
pub const MOVED_HEADER: &str = "quarry-placement-epoch";
/// Seed of the second-level hash (a partition within its block).
const WITHIN_BLOCK_SEED: u64 = 0x7175_6172_7279_7032;

/// How ids map to partitions; fixed for a cluster's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partitioning {
    /// The shard count the cluster was created with.
    pub base_shards: u32,
    /// Partitions per block (one block per creation shard).
    pub per_shard: u32,
}

impl Partitioning {
    /// `partitions` in all (a multiple of `shards`), or the default: at least
    /// `DEFAULT_MIN_PARTITIONS`, a whole number per shard.
    pub fn new(shards: u32, partitions: Option<u32>) -> Result<Self, KitError> {
        if shards == 0 {
            return Err(KitError::Config("shards must be at least 1".to_string()));
        }
        let per_shard = match partitions {
            None => DEFAULT_MIN_PARTITIONS.div_ceil(shards),
            Some(partitions) if partitions >= shards && partitions % shards == 0 => {
                partitions / shards
            }
            Some(partitions) => {
                return Err(KitError::Config(format!(
                    "partitions: {partitions} is not a multiple of the {shards} shard(s)"
                )))
            }
        };
        let partitioning = Self {
            base_shards: shards,
            per_shard,
        };
        if partitioning.count() > MAX_PARTITIONS {
            return Err(KitError::Config(format!(
                "partitions: at most {MAX_PARTITIONS}"
            )));
        }
        Ok(partitioning)
    }

    pub fn count(&self) -> u32 {
        self.base_shards * self.per_shard
    }

    /// The partition of a document id.
    pub fn partition_of(&self, id: &str) -> u32 {
        let block = jump_consistent_hash(xxh3_64(id.as_bytes()), self.base_shards);
        let within = jump_consistent_hash(
            xxh3_64_with_seed(id.as_bytes(), WITHIN_BLOCK_SEED),
            self.per_shard,
        );
        block * self.per_shard + within
    }

    /// The shard that owns `partition` before any move (its block's shard).
    pub fn initial_owner(&self, partition: u32) -> u32 {
        partition / self.per_shard
    }
}

/// Where one move stands; each phase is recorded in the placement before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Decided, nothing done.
    Planned,
    /// The target is written to (not read); the source refuses writes routed before.
    Importing,
    /// The target copies the partition from the source.
    Copying,
    /// Cut over: the target owns it; the source still answers older snapshots, then drops it.
    Dropping,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Planned => "planned",
            Phase::Importing => "importing",
            Phase::Copying => "copying",
            Phase::Dropping => "dropping",
        }
    }
}

/// One partition changing owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub partition: u32,
    pub from: u32,
    pub to: u32,
    pub phase: Phase,
}

/// Which shard owns each partition, and the moves under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Grows with every change of who reads or writes some partition.
    pub epoch: u64,
    pub partitioning: Partitioning,
    /// The owner of each partition (index: partition).
    pub owners: Vec<u32>,
    /// The epoch at which each partition's set of writers last changed; writes routed
    /// before it are refused.
    pub writers_since: Vec<u64>,
    /// The shard count asked for; equal to the owners' count when no scale is under way.
    pub target_shards: u32,
    /// Moves not finished, at most one per partition.
    pub moves: Vec<Move>,
    /// `scale --abort` was asked: moves not cut over roll back.
    #[serde(default)]
    pub aborting: bool,
}

impl Placement {
    /// Every partition with its block's shard, epoch 1.
    pub fn initial(partitioning: Partitioning) -> Self {
        let count = partitioning.count();
        Self {
            epoch: 1,
            partitioning,
            owners: (0..count)
                .map(|partition| partitioning.initial_owner(partition))
                .collect(),
            writers_since: vec![1; count as usize],
            target_shards: partitioning.base_shards,
            moves: Vec::new(),
            aborting: false,
        }
    }

    pub fn partition_of(&self, id: &str) -> u32 {
        self.partitioning.partition_of(id)
    }

    /// The shards that own some partition, ascending: the shards a query asks.
    pub fn serving_shards(&self) -> Vec<u32> {
        let shards: BTreeSet<u32> = self.owners.iter().copied().collect();
        shards.into_iter().collect()
    }

    /// How many shards the cluster has: those owning data, those being filled and the
    /// count asked for, whichever is most (a shard numbered below it exists).
    pub fn shard_count(&self) -> u32 {
        let highest = self
            .owners
            .iter()
            .chain(self.moves.iter().map(|moving| &moving.to))
            .copied()
            .max()
            .map_or(0, |shard| shard + 1);
        highest.max(self.target_shards)
    }

    /// The partitions `shard` owns, ascending.
    pub fn owned_by(&self, shard: u32) -> Vec<u32> {
        (0..self.owners.len() as u32)
            .filter(|partition| self.owners[*partition as usize] == shard)
            .collect()
    }

    pub fn move_of(&self, partition: u32) -> Option<&Move> {
        self.moves
            .iter()
            .find(|moving| moving.partition == partition)
    }

    pub fn owner(&self, partition: u32) -> Option<u32> {
        self.owners.get(partition as usize).copied()
    }

    /// The shards a write to `partition` goes to: the owner, and a target importing it.
    pub fn writers(&self, partition: u32) -> Vec<u32> {
        let mut writers: Vec<u32> = self.owner(partition).into_iter().collect();
        if let Some(moving) = self.move_of(partition) {
            if matches!(moving.phase, Phase::Importing | Phase::Copying) {
                writers.push(moving.to);
            }
        }
        writers
    }

    /// The epoch before which writes to `partition` are refused.
    pub fn writers_since(&self, partition: u32) -> u64 {
        self.writers_since
            .get(partition as usize)
            .copied()
            .unwrap_or(u64::MAX)
    }

    /// Whether `shard` answers reads of `partition`: its owner, or the source of a move cut
    /// over but not yet dropped (for queries holding an older snapshot).
    pub fn readable_at(&self, shard: u32, partition: u32) -> bool {
        self.owner(partition) == Some(shard)
            || self
                .move_of(partition)
                .is_some_and(|moving| moving.from == shard && moving.phase == Phase::Dropping)
    }

    /// Whether `shard` keeps `partition`'s files: it owns, imports or still drains it.
    pub fn kept_at(&self, shard: u32, partition: u32) -> bool {
        self.owner(partition) == Some(shard)
            || self.move_of(partition).is_some_and(|moving| {
                moving.from == shard || (moving.to == shard && moving.phase > Phase::Planned)
            })
    }

    /// The next placement: `change` applied, the epoch advanced, and `writers_since` of
    /// every partition whose writers changed set to the new epoch.
    pub fn next(&self, change: impl FnOnce(&mut Placement)) -> Placement {
        let mut next = self.clone();
        change(&mut next);
        next.epoch = self.epoch + 1;
        for partition in 0..next.owners.len() as u32 {
            if self.writers(partition) != next.writers(partition) {
                next.writers_since[partition as usize] = next.epoch;
            }
        }
        next
    }
}

/// A move's progress as the coordinator reports it (`quarry cluster status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MoveProgress {
    pub partition: u32,
    pub from: u32,
    pub to: u32,
    pub phase: String,
    pub documents_copied: u64,
    pub bytes_copied: u64,
    /// Documents the source held when the copy began (all collections).
    pub documents_total: u64,
    pub started_ms: u64,
    pub updated_ms: u64,
}

impl MoveProgress {
    /// Documents per second so far.
    pub fn rate(&self) -> f64 {
        let seconds = self.updated_ms.saturating_sub(self.started_ms) as f64 / 1000.0;
        if seconds <= 0.0 {
            return 0.0;
        }
        self.documents_copied as f64 / seconds
    }

    /// Seconds left at the rate so far, when it can be told.
    pub fn eta_seconds(&self) -> Option<f64> {
        let rate = self.rate();
        (rate > 0.0 && self.documents_total >= self.documents_copied)
            .then(|| (self.documents_total - self.documents_copied) as f64 / rate)
    }
}

/// What the coordinator last reported about a scale.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScaleProgress {
    pub target_shards: u32,
    pub moves_done: u32,
    pub moves_total: u32,
    pub current: Vec<MoveProgress>,
    /// The last error the coordinator hit, if the scale is stuck retrying.
    #[serde(default)]
    pub last_error: String,
}

/// Where a coordinator's writes are fenced: an election key and its creation revision.
#[derive(Debug, Clone)]
pub struct Fence {
    pub key: Vec<u8>,
    pub revision: i64,
}

/// Where the placement is kept, watched by every gateway and retriever.
#[async_trait::async_trait]
pub trait PlacementStore: Send + Sync + 'static {
    /// The placement, as of the last change seen.
    fn watch(&self) -> watch::Receiver<Arc<Placement>>;
    /// Reads the placement now (not waiting for the watch) and publishes it.
    async fn refresh(&self) -> Result<Arc<Placement>, KitError>;
    /// Replaces the placement if it is still at `expected`'s epoch (and, fenced, while the
    /// fence's election key stands); false when someone else changed it first.
    async fn replace(
        &self,
        expected: &Placement,
        next: &Placement,
        fence: Option<&Fence>,
    ) -> Result<bool, KitError>;
    /// Records the coordinator's progress report.
    async fn put_progress(&self, progress: &ScaleProgress) -> Result<(), KitError>;
    async fn progress(&self) -> Result<Option<ScaleProgress>, KitError>;
}

/// Waits until `placement` reaches `epoch` (or `timeout`); the snapshot then current.
pub async fn wait_for_epoch(
    placement: &watch::Receiver<Arc<Placement>>,
    epoch: u64,
    timeout: std::time::Duration,
) -> Arc<Placement> {
    let mut receiver = placement.clone();
    let reached = tokio::time::timeout(timeout, receiver.wait_for(|now| now.epoch >= epoch)).await;
    match reached {
        Ok(Ok(snapshot)) => Arc::clone(&snapshot),
        _ => Arc::clone(&placement.borrow()),
    }
}

/// A placement that never changes (tests, and roles given each other's addresses).
pub fn fixed(placement: Placement) -> watch::Receiver<Arc<Placement>> {
    watch::channel(Arc::new(placement)).1
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
