//! A replica's collections: one `PartitionedIndex` (the partitions of the collection this
//! shard holds, each a tantivy index, vector index, versions and tombstones) per
//! collection, so each has its own BM25 statistics. `default` lives in the replica's
//! directory itself (where the one index of earlier versions lives, so nothing moves on
//! upgrade); another collection in `collections/<name>/`, with a marker naming the
//! collection's uid. A collection is opened on first use, once the catalog has it, and
//! dropped — closed and its directory removed — as soon as the catalog no longer has it
//! (or has another collection of that name): at start for what was deleted while the
//! replica was down, and on every catalog change after.
//!
//! The replica also follows the placement: it drops a partition as soon as the placement no
//! longer has it here (moved away, or a move onto it rolled back), answers reads only for
//! partitions it serves at the reader's epoch, and takes writes only for partitions it is a
//! writer of, routed at or after the epoch their writers last changed (`Moved` otherwise).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use quarry_kit::collections::{CatalogSnapshot, DEFAULT_COLLECTION};
use quarry_kit::placement::Placement;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::RetrieverError;
use crate::partitions::PartitionedIndex;

/// How long a request for a collection this replica has not seen waits for the catalog to
/// show it (the gateway saw it created; this replica's watch may be a moment behind).
const CATALOG_LAG: Duration = Duration::from_secs(2);
/// How long a request routed at a placement epoch this replica has not seen yet waits for
/// its watch to deliver it.
const PLACEMENT_LAG: Duration = Duration::from_secs(2);
const COLLECTIONS_DIR: &str = "collections";
const MARKER_FILE: &str = "collection.json";

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    name: String,
    uid: String,
}

struct Open {
    uid: String,
    index: Arc<PartitionedIndex>,
}

/// Every collection of one shard replica.
pub struct ShardCollections {
    root: PathBuf,
    shard: u32,
    replica: u32,
    writer_memory_bytes: usize,
    catalog: watch::Receiver<Arc<CatalogSnapshot>>,
    placement: watch::Receiver<Arc<Placement>>,
    /// Stamps deletes that come without a version.
    clock: quarry_kit::VersionClock,
    open: RwLock<HashMap<String, Open>>,
    /// One collection opened at a time (tantivy takes a directory's writer lock once).
    opening: tokio::sync::Mutex<()>,
}

impl ShardCollections {
    /// Opens the replica under `root`: `default` at once, others on first use; drops what
    /// the catalog no longer has.
    pub fn open(
        root: &Path,
        shard: u32,
        replica: u32,
        writer_memory_bytes: usize,
        catalog: watch::Receiver<Arc<CatalogSnapshot>>,
        placement: watch::Receiver<Arc<Placement>>,
    ) -> Result<Self, RetrieverError> {
        let now = Arc::clone(&placement.borrow());
        let default_index = Arc::new(PartitionedIndex::open(
            root,
            shard,
            replica,
            writer_memory_bytes,
            now.partitioning,
            |partition| now.kept_at(shard, partition),
        )?);
        let mut open = HashMap::new();
        open.insert(
            DEFAULT_COLLECTION.to_string(),
            Open {
                uid: DEFAULT_COLLECTION.to_string(),
                index: default_index,
            },
        );
        let collections = Self {
            root: root.to_path_buf(),
            shard,
            replica,
            writer_memory_bytes,
            catalog,
            placement,
            clock: quarry_kit::VersionClock::default(),
            open: RwLock::new(open),
            opening: tokio::sync::Mutex::new(()),
        };
        collections.reconcile();
        Ok(collections)
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn replica(&self) -> u32 {
        self.replica
    }

    /// A version for a delete that came without one.
    pub fn next_version(&self) -> u64 {
        self.clock.next()
    }

    /// The placement as this replica last saw it.
    pub fn placement(&self) -> Arc<Placement> {
        Arc::clone(&self.placement.borrow())
    }

    /// The placement once it reached `epoch` (or after a short wait, the one seen then).
    pub async fn placement_at_least(&self, epoch: u64) -> Arc<Placement> {
        quarry_kit::placement::wait_for_epoch(&self.placement, epoch, PLACEMENT_LAG).await
    }

    /// The partitions to read for a request routed at `epoch`: those asked for (all this
    /// shard serves when none are), each served here at the placement seen.
    pub async fn readable(&self, asked: &[u32], epoch: u64) -> Result<Vec<u32>, RetrieverError> {
        let placement = self.placement_at_least(epoch).await;
        if asked.is_empty() {
            return Ok(placement.owned_by(self.shard));
        }
        for partition in asked {
            if !placement.readable_at(self.shard, *partition) {
                return Err(RetrieverError::Moved {
                    epoch: placement.epoch,
                    message: format!(
                        "partition {partition} is not served by shard {} at placement epoch {}",
                        self.shard, placement.epoch
                    ),
                });
            }
        }
        Ok(asked.to_vec())
    }

    /// A check, for each partition written, that this shard takes writes to it routed at
    /// `epoch` (0: a copy between replicas, taken for any partition kept here); read from
    /// the placement as it is when the partition's writer is held.
    pub fn write_fence(
        &self,
        epoch: u64,
    ) -> impl Fn(u32) -> Result<(), RetrieverError> + Send + Sync + 'static {
        let placement = self.placement.clone();
        let shard = self.shard;
        move |partition| {
            let placement = placement.borrow();
            let allowed = match epoch {
                0 => placement.kept_at(shard, partition),
                epoch => {
                    placement.writers(partition).contains(&shard)
                        && epoch >= placement.writers_since(partition)
                }
            };
            match allowed {
                true => Ok(()),
                false => Err(RetrieverError::Moved {
                    epoch: placement.epoch,
                    message: format!(
                        "shard {shard} takes no writes to partition {partition} routed at placement epoch {epoch} (now {})",
                        placement.epoch
                    ),
                }),
            }
        }
    }

    /// The `default` collection's index.
    pub fn default_collection(&self) -> Arc<PartitionedIndex> {
        self.opened(DEFAULT_COLLECTION)
            .expect("default is opened at start and never dropped")
    }

    /// The collections the catalog has now.
    pub fn names(&self) -> Vec<String> {
        self.catalog.borrow().collections.keys().cloned().collect()
    }

    /// Every open collection's index (to save their vectors on the way out).
    pub fn opened_all(&self) -> Vec<Arc<PartitionedIndex>> {
        self.open
            .read()
            .map(|open| {
                open.values()
                    .map(|entry| Arc::clone(&entry.index))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn opened(&self, name: &str) -> Option<Arc<PartitionedIndex>> {
        self.open
            .read()
            .ok()?
            .get(name)
            .map(|entry| Arc::clone(&entry.index))
    }

    /// The index of collection `name` ("" is `default`), opened (created) on first use;
    /// NOT_FOUND when the catalog does not have it, INVALID_ARGUMENT for a bad name.
    pub async fn get(&self, name: &str) -> Result<Arc<PartitionedIndex>, RetrieverError> {
        let name = quarry_kit::collections::resolve_name("collection", name)
            .map_err(|error| RetrieverError::Refused(error.to_string()))?;
        if let Some(shard) = self.opened(name) {
            return Ok(shard);
        }
        let uid = self.wait_for(name).await?;
        let _opening = self.opening.lock().await;
        if let Some(shard) = self.opened(name) {
            return Ok(shard);
        }
        let directory = self.directory_of(name);
        let (shard_number, replica, memory) = (self.shard, self.replica, self.writer_memory_bytes);
        let marker = Marker {
            name: name.to_string(),
            uid: uid.clone(),
        };
        let placement = self.placement();
        let opened = tokio::task::spawn_blocking(move || {
            let keep = |partition| placement.kept_at(shard_number, partition);
            let partitioning = placement.partitioning;
            open_marked(
                &directory,
                &marker,
                shard_number,
                replica,
                memory,
                partitioning,
                keep,
            )
        })
        .await
        .map_err(|error| RetrieverError::Internal(format!("opening a collection: {error}")))??;
        let opened = Arc::new(opened);
        if let Ok(mut open) = self.open.write() {
            open.insert(
                name.to_string(),
                Open {
                    uid,
                    index: Arc::clone(&opened),
                },
            );
        }
        info!(
            collection = name,
            shard = self.shard,
            replica = self.replica,
            "collection opened"
        );
        Ok(opened)
    }

    /// The uid of collection `name` once the catalog has it (waiting a moment for a catalog
    /// that is behind); NOT_FOUND otherwise.
    async fn wait_for(&self, name: &str) -> Result<String, RetrieverError> {
        let uid_now = |snapshot: &CatalogSnapshot| snapshot.get(name).map(|c| c.uid.clone());
        if let Some(uid) = uid_now(&self.catalog.borrow()) {
            return Ok(uid);
        }
        let mut catalog = self.catalog.clone();
        let appeared =
            tokio::time::timeout(CATALOG_LAG, catalog.wait_for(|s| s.get(name).is_some())).await;
        match appeared {
            Ok(Ok(snapshot)) => {
                uid_now(&snapshot).ok_or_else(|| RetrieverError::UnknownCollection(name.into()))
            }
            _ => Err(RetrieverError::UnknownCollection(name.to_string())),
        }
    }

    fn directory_of(&self, name: &str) -> PathBuf {
        match name {
            DEFAULT_COLLECTION => self.root.clone(),
            name => self.root.join(COLLECTIONS_DIR).join(name),
        }
    }

    /// Drops every open collection and every directory the catalog does not have (or has
    /// under another uid).
    pub fn reconcile(&self) {
        let snapshot = Arc::clone(&self.catalog.borrow());
        let current =
            |name: &str, uid: &str| snapshot.get(name).is_some_and(|record| record.uid == uid);
        self.drop_moved_partitions();
        let dropped: Vec<(String, Arc<PartitionedIndex>)> = match self.open.write() {
            Ok(mut open) => {
                let stale: Vec<String> = open
                    .iter()
                    .filter(|(name, entry)| {
                        name.as_str() != DEFAULT_COLLECTION && !current(name, &entry.uid)
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                stale
                    .into_iter()
                    .filter_map(|name| open.remove(&name).map(|entry| (name, entry.index)))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        drop(dropped);
        // A collection being opened is left alone (its marker may not be written yet); the
        // next change looks again.
        let Ok(_opening) = self.opening.try_lock() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(self.root.join(COLLECTIONS_DIR)) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            let marker = std::fs::read(path.join(MARKER_FILE))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Marker>(&bytes).ok());
            let keep = marker.is_some_and(|marker| current(&name, &marker.uid));
            if keep {
                continue;
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => info!(
                    collection = name,
                    shard = self.shard,
                    replica = self.replica,
                    "collection dropped: the catalog no longer has it"
                ),
                Err(error) => warn!(
                    collection = name,
                    error = %error,
                    "could not remove a dropped collection's directory"
                ),
            }
        }
    }

    /// Drops, in every open collection, the partitions the placement no longer keeps here.
    fn drop_moved_partitions(&self) {
        let placement = self.placement();
        for index in self.opened_all() {
            for partition in index.held() {
                if placement.kept_at(self.shard, partition) {
                    continue;
                }
                if let Err(error) = index.drop_partition(partition) {
                    warn!(partition, error = %error, "could not drop a moved partition");
                }
            }
        }
    }

    /// Reconciles after every catalog or placement change, until `stop`.
    pub async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let mut catalog = self.catalog.clone();
        let mut placement = self.placement.clone();
        // A fixed placement's channel is closed: then only the catalog changes.
        let mut placement_open = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = catalog.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                changed = placement.changed(), if placement_open => {
                    placement_open = changed.is_ok();
                }
            }
            let this = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || this.reconcile()).await;
        }
    }
}

/// Opens a collection's index, starting afresh when the directory holds another
/// collection's files (one deleted and created again while this replica was away).
fn open_marked(
    directory: &Path,
    marker: &Marker,
    shard: u32,
    replica: u32,
    writer_memory_bytes: usize,
    partitioning: quarry_kit::placement::Partitioning,
    keep: impl Fn(u32) -> bool,
) -> Result<PartitionedIndex, RetrieverError> {
    let io = |error: std::io::Error| RetrieverError::Open {
        path: directory.display().to_string(),
        reason: error.to_string(),
    };
    let marker_path = directory.join(MARKER_FILE);
    let existing = std::fs::read(&marker_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Marker>(&bytes).ok());
    if existing.is_some_and(|existing| existing.uid != marker.uid) || !marker_path.exists() {
        if directory.exists() {
            std::fs::remove_dir_all(directory).map_err(io)?;
        }
        std::fs::create_dir_all(directory).map_err(io)?;
        let bytes = serde_json::to_vec(marker)
            .map_err(|error| RetrieverError::Internal(error.to_string()))?;
        let temporary = directory.join(format!("{MARKER_FILE}.tmp"));
        std::fs::write(&temporary, bytes).map_err(io)?;
        std::fs::rename(&temporary, &marker_path).map_err(io)?;
    }
    PartitionedIndex::open(
        directory,
        shard,
        replica,
        writer_memory_bytes,
        partitioning,
        keep,
    )
}

/// A placement of one shard with one partition (unit tests).
#[cfg(test)]
pub(crate) fn one_partition() -> watch::Receiver<Arc<Placement>> {
    let partitioning = quarry_kit::placement::Partitioning::new(1, Some(1)).unwrap();
    quarry_kit::placement::fixed(Placement::initial(partitioning))
}
