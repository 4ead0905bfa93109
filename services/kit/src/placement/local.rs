//! The placement without etcd: `quarry up` keeps it in `placement.json` in its data
//! directory (written durably), one process being every role.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{Fence, Partitioning, Placement, PlacementStore, ScaleProgress};
use crate::error::KitError;

const PLACEMENT_FILE: &str = "placement.json";

pub struct LocalPlacement {
    /// `None`: kept in memory only (roles given each other's addresses).
    path: Option<PathBuf>,
    sender: watch::Sender<Arc<Placement>>,
    progress: Mutex<Option<ScaleProgress>>,
    /// Serialises replacements (and the file's writes).
    changes: Mutex<()>,
}

impl LocalPlacement {
    /// Opens the placement under `data_dir`; a directory without one starts with every
    /// partition at its block's shard.
    pub fn open(data_dir: &std::path::Path, partitioning: Partitioning) -> Result<Self, KitError> {
        let path = data_dir.join(PLACEMENT_FILE);
        let placement = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| KitError::Config(format!("{}: {error}", path.display())))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Placement::initial(partitioning)
            }
            Err(error) => return Err(KitError::Config(format!("{}: {error}", path.display()))),
        };
        let (sender, _) = watch::channel(Arc::new(placement));
        Ok(Self {
            path: Some(path),
            sender,
            progress: Mutex::new(None),
            changes: Mutex::new(()),
        })
    }

    /// The initial placement, in memory.
    pub fn in_memory(partitioning: Partitioning) -> Self {
        Self {
            path: None,
            sender: watch::channel(Arc::new(Placement::initial(partitioning))).0,
            progress: Mutex::new(None),
            changes: Mutex::new(()),
        }
    }

    /// The placement kept in `data_dir`, if one was ever written.
    pub fn read(data_dir: &std::path::Path) -> Option<Placement> {
        let bytes = std::fs::read(data_dir.join(PLACEMENT_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[async_trait::async_trait]
impl PlacementStore for LocalPlacement {
    fn watch(&self) -> watch::Receiver<Arc<Placement>> {
        self.sender.subscribe()
    }

    async fn refresh(&self) -> Result<Arc<Placement>, KitError> {
        Ok(Arc::clone(&self.sender.borrow()))
    }

    async fn replace(
        &self,
        expected: &Placement,
        next: &Placement,
        _fence: Option<&Fence>,
    ) -> Result<bool, KitError> {
        let _serial = self
            .changes
            .lock()
            .map_err(|_| KitError::Config("placement lock poisoned".to_string()))?;
        if self.sender.borrow().as_ref() != expected {
            return Ok(false);
        }
        if let Some(path) = &self.path {
            let bytes = serde_json::to_vec_pretty(next)
                .map_err(|error| KitError::Config(error.to_string()))?;
            crate::durable::write_file(path, &bytes)
                .map_err(|error| KitError::Config(format!("{}: {error}", path.display())))?;
        }
        self.sender.send_replace(Arc::new(next.clone()));
        Ok(true)
    }

    async fn put_progress(&self, progress: &ScaleProgress) -> Result<(), KitError> {
        if let Ok(mut slot) = self.progress.lock() {
            *slot = Some(progress.clone());
        }
        Ok(())
    }

    async fn progress(&self) -> Result<Option<ScaleProgress>, KitError> {
        Ok(self.progress.lock().ok().and_then(|slot| slot.clone()))
    }
}
