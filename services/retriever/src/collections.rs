//! A replica's collections: one `Shard` (tantivy index, vector index, versions, tombstones)
//! per collection, so each has its own BM25 statistics. `default` lives in the replica's
//! directory itself (where the one index of earlier versions lives, so nothing moves on
//! upgrade); another collection in `collections/<name>/`, with a marker naming the
//! collection's uid. A collection is opened on first use, once the catalog has it, and
//! dropped — closed and its directory removed — as soon as the catalog no longer has it
//! (or has another collection of that name): at start for what was deleted while the
//! replica was down, and on every catalog change after.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use quarry_kit::collections::{CatalogSnapshot, DEFAULT_COLLECTION};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::RetrieverError;
use crate::shard::Shard;

/// How long a request for a collection this replica has not seen waits for the catalog to
/// show it (the gateway saw it created; this replica's watch may be a moment behind).
const CATALOG_LAG: Duration = Duration::from_secs(2);
const COLLECTIONS_DIR: &str = "collections";
const MARKER_FILE: &str = "collection.json";

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    name: String,
    uid: String,
}

struct Open {
    uid: String,
    shard: Arc<Shard>,
}

/// Every collection of one shard replica.
pub struct ShardCollections {
    root: PathBuf,
    shard: u32,
    replica: u32,
    writer_memory_bytes: usize,
    catalog: watch::Receiver<Arc<CatalogSnapshot>>,
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
    ) -> Result<Self, RetrieverError> {
        let default_shard = Arc::new(Shard::open(root, shard, replica, writer_memory_bytes)?);
        let mut open = HashMap::new();
        open.insert(
            DEFAULT_COLLECTION.to_string(),
            Open {
                uid: DEFAULT_COLLECTION.to_string(),
                shard: default_shard,
            },
        );
        let collections = Self {
            root: root.to_path_buf(),
            shard,
            replica,
            writer_memory_bytes,
            catalog,
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

    /// The `default` collection's index.
    pub fn default_collection(&self) -> Arc<Shard> {
        self.opened(DEFAULT_COLLECTION)
            .expect("default is opened at start and never dropped")
    }

    /// The collections the catalog has now.
    pub fn names(&self) -> Vec<String> {
        self.catalog.borrow().collections.keys().cloned().collect()
    }

    /// Every open collection's index (to save their vectors on the way out).
    pub fn opened_all(&self) -> Vec<Arc<Shard>> {
        self.open
            .read()
            .map(|open| {
                open.values()
                    .map(|entry| Arc::clone(&entry.shard))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn opened(&self, name: &str) -> Option<Arc<Shard>> {
        self.open
            .read()
            .ok()?
            .get(name)
            .map(|entry| Arc::clone(&entry.shard))
    }

    /// The index of collection `name` ("" is `default`), opened (created) on first use;
    /// NOT_FOUND when the catalog does not have it, INVALID_ARGUMENT for a bad name.
    pub async fn get(&self, name: &str) -> Result<Arc<Shard>, RetrieverError> {
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
        let opened = tokio::task::spawn_blocking(move || {
            open_marked(&directory, &marker, shard_number, replica, memory)
        })
        .await
        .map_err(|error| RetrieverError::Internal(format!("opening a collection: {error}")))??;
        let opened = Arc::new(opened);
        if let Ok(mut open) = self.open.write() {
            open.insert(
                name.to_string(),
                Open {
                    uid,
                    shard: Arc::clone(&opened),
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
        let dropped: Vec<(String, Arc<Shard>)> = match self.open.write() {
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
                    .filter_map(|name| open.remove(&name).map(|entry| (name, entry.shard)))
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

    /// Reconciles after every catalog change, until `stop`.
    pub async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let mut catalog = self.catalog.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = catalog.changed() => {
                    if changed.is_err() {
                        return;
                    }
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
) -> Result<Shard, RetrieverError> {
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
    Shard::open(directory, shard, replica, writer_memory_bytes)
}
