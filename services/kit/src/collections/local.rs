//! Catalogs without etcd. `LocalCatalog`: `quarry up`, where every role is in one process,
//! keeps its collections in one file of the data directory (written to a temporary file,
//! fsynced, renamed). `LocalCatalog::fixed`: roles started with static addresses and no etcd share
//! no catalog, so they know only `default`.
//!
//! Generations are kept in memory and start from the wall clock in µs, so a restarted
//! process never reuses a generation an external answer cache (Redis) may still hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{
    check_create, check_delete, new_record, CatalogError, CatalogSnapshot, Collection,
    CollectionCatalog, FieldKinds,
};

const CATALOG_FILE: &str = "collections.json";

/// Collections of a `quarry up` cluster, kept in its data directory.
pub struct LocalCatalog {
    /// `None`: only `default`, creation refused (`LocalCatalog::fixed`).
    path: Option<PathBuf>,
    /// Serialises changes (and the file's writes).
    changes: Mutex<()>,
    sender: watch::Sender<Arc<CatalogSnapshot>>,
}

impl LocalCatalog {
    /// Only `default`: for roles that share no catalog (static addresses, no etcd).
    pub fn fixed() -> Self {
        Self::with_records(None, Vec::new())
    }

    /// Opens (or starts) the catalog file under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, CatalogError> {
        let path = data_dir.join(CATALOG_FILE);
        let records: Vec<Collection> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
                CatalogError::Unavailable(format!("{}: {error}", path.display()))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => {
                return Err(CatalogError::Unavailable(format!(
                    "{}: {error}",
                    path.display()
                )))
            }
        };
        Ok(Self::with_records(Some(path), records))
    }

    fn with_records(path: Option<PathBuf>, records: Vec<Collection>) -> Self {
        let start = clock_generation();
        let mut snapshot = CatalogSnapshot::from_records(records);
        for collection in snapshot.collections.values_mut() {
            collection.generation = start;
        }
        let (sender, _) = watch::channel(Arc::new(snapshot));
        Self {
            path,
            changes: Mutex::new(()),
            sender,
        }
    }

    /// Applies `change` to a copy of the snapshot, writes the records, then publishes.
    fn change(
        &self,
        change: impl FnOnce(&mut CatalogSnapshot) -> Result<Collection, CatalogError>,
    ) -> Result<Collection, CatalogError> {
        let _serial = self
            .changes
            .lock()
            .map_err(|_| CatalogError::Unavailable("catalog lock poisoned".to_string()))?;
        let mut snapshot = self.sender.borrow().as_ref().clone();
        let changed = change(&mut snapshot)?;
        if let Some(path) = &self.path {
            write_records(path, &snapshot)?;
        }
        self.sender.send_replace(Arc::new(snapshot));
        Ok(changed)
    }
}

#[async_trait::async_trait]
impl CollectionCatalog for LocalCatalog {
    async fn create(&self, name: &str, description: &str) -> Result<Collection, CatalogError> {
        if self.path.is_none() {
            return Err(CatalogError::Unsupported(
                "only `default` exists without etcd: collections need etcd discovery or \
                 `quarry up`"
                    .to_string(),
            ));
        }
        self.change(|snapshot| {
            check_create(snapshot, name, description)?;
            let mut record = new_record(name, description);
            record.generation = clock_generation();
            snapshot
                .collections
                .insert(name.to_string(), record.clone());
            Ok(record)
        })
    }

    async fn delete(&self, name: &str) -> Result<Collection, CatalogError> {
        check_delete(name)?;
        self.change(|snapshot| {
            snapshot
                .collections
                .remove(name)
                .ok_or_else(|| CatalogError::NotFound(name.to_string()))
        })
    }

    async fn record_write(&self, name: &str) -> Result<(), CatalogError> {
        self.sender.send_if_modified(|snapshot| {
            let mut changed = snapshot.as_ref().clone();
            let Some(collection) = changed.collections.get_mut(name) else {
                return false;
            };
            collection.generation = clock_generation().max(collection.generation + 1);
            *snapshot = Arc::new(changed);
            true
        });
        Ok(())
    }

    async fn record_fields(
        &self,
        name: &str,
        fields: &BTreeMap<String, FieldKinds>,
    ) -> Result<(), CatalogError> {
        let missing = match self.sender.borrow().get(name) {
            Some(collection) => collection.unrecorded(fields),
            None => return Ok(()),
        };
        if missing.is_empty() {
            return Ok(());
        }
        self.change(|snapshot| {
            let collection = snapshot
                .collections
                .get_mut(name)
                .ok_or_else(|| CatalogError::NotFound(name.to_string()))?;
            for (path, kind) in missing {
                let entry = collection.fields.entry(path).or_default();
                *entry = entry.with(kind);
            }
            Ok(collection.clone())
        })
        .map(|_| ())
    }

    fn watch(&self) -> watch::Receiver<Arc<CatalogSnapshot>> {
        self.sender.subscribe()
    }
}

/// The wall clock in µs: a generation no earlier process handed out.
fn clock_generation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_micros() as u64)
}

/// Writes every record (`default` only once it has recorded fields), durably.
fn write_records(path: &Path, snapshot: &CatalogSnapshot) -> Result<(), CatalogError> {
    let records: Vec<&Collection> = snapshot
        .collections
        .values()
        .filter(|collection| {
            collection.name != super::DEFAULT_COLLECTION || !collection.fields.is_empty()
        })
        .collect();
    let failed =
        |error: std::io::Error| CatalogError::Unavailable(format!("{}: {error}", path.display()));
    let bytes = serde_json::to_vec_pretty(&records)
        .map_err(|error| CatalogError::Unavailable(error.to_string()))?;
    crate::durable::write_file(path, &bytes).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn collections_survive_a_restart_and_writes_change_the_generation() {
        let directory = tempfile::tempdir().unwrap();
        let catalog = LocalCatalog::open(directory.path()).unwrap();
        let created = catalog.create("hr", "handbook").await.unwrap();
        assert_eq!(created.name, "hr");
        assert!(matches!(
            catalog.create("hr", "").await,
            Err(CatalogError::AlreadyExists(_))
        ));
        let before = catalog.snapshot().generation("hr").unwrap();
        catalog.record_write("hr").await.unwrap();
        assert!(catalog.snapshot().generation("hr").unwrap() > before);
        let reopened = LocalCatalog::open(directory.path()).unwrap();
        assert_eq!(reopened.snapshot().get("hr").unwrap().uid, created.uid);
        reopened.delete("hr").await.unwrap();
        assert!(matches!(
            reopened.delete("hr").await,
            Err(CatalogError::NotFound(_))
        ));
        assert!(LocalCatalog::open(directory.path())
            .unwrap()
            .snapshot()
            .get("hr")
            .is_none());
    }

    #[tokio::test]
    async fn the_fixed_catalog_has_only_default() {
        let catalog = LocalCatalog::fixed();
        assert!(matches!(
            catalog.create("hr", "").await,
            Err(CatalogError::Unsupported(_))
        ));
        assert_eq!(catalog.snapshot().collections.len(), 1);
    }
}
