//! The record of deletes (tombstones) that lets a replica refuse a write older than a delete
//! it has applied (versions come from `quarry_kit::VersionClock`). Tombstones live in an
//! append-only file beside the index, each line fsynced before the delete is acknowledged;
//! they are kept for good (one short line per deleted id).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::RetrieverError;

#[derive(Serialize, Deserialize)]
struct TombstoneLine {
    id: String,
    version: u64,
}

/// The newest delete of every deleted id, on disk and in memory.
pub struct Tombstones {
    path: PathBuf,
    file: File,
    newest: HashMap<String, u64>,
}

impl Tombstones {
    /// Loads `tombstones.jsonl` under `directory`. A torn last line (a crash mid-append,
    /// before the delete was acknowledged) is cut off, so the next append starts clean.
    pub fn open(directory: &Path) -> Result<Self, RetrieverError> {
        let path = directory.join("tombstones.jsonl");
        let io_error = |error: std::io::Error| RetrieverError::Open {
            path: path.display().to_string(),
            reason: error.to_string(),
        };
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_error)?;
        let mut content = Vec::new();
        BufReader::new(&file)
            .read_to_end(&mut content)
            .map_err(io_error)?;
        let complete = content
            .iter()
            .rposition(|byte| *byte == b'\n')
            .map_or(0, |last| last + 1);
        if complete < content.len() {
            file.set_len(complete as u64).map_err(io_error)?;
            file.sync_data().map_err(io_error)?;
        }
        let mut newest = HashMap::new();
        for line in content[..complete].split(|byte| *byte == b'\n') {
            let Ok(tombstone) = serde_json::from_slice::<TombstoneLine>(line) else {
                continue;
            };
            let entry = newest.entry(tombstone.id).or_insert(0);
            *entry = (*entry).max(tombstone.version);
        }
        Ok(Self { path, file, newest })
    }

    /// The version of the newest delete of `id`, if it was ever deleted.
    pub fn version(&self, id: &str) -> Option<u64> {
        self.newest.get(id).copied()
    }

    /// Every tombstone: id and version.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.newest
            .iter()
            .map(|(id, version)| (id.as_str(), *version))
    }

    /// Records deletes durably (written and fsynced) before they take effect.
    pub fn record(&mut self, deletes: &[(String, u64)]) -> Result<(), RetrieverError> {
        let mut lines = String::new();
        for (id, version) in deletes {
            if self.version(id).is_some_and(|known| known >= *version) {
                continue;
            }
            let line = TombstoneLine {
                id: id.clone(),
                version: *version,
            };
            lines.push_str(
                &serde_json::to_string(&line)
                    .map_err(|error| RetrieverError::Internal(error.to_string()))?,
            );
            lines.push('\n');
        }
        if lines.is_empty() {
            return Ok(());
        }
        let write_error = |error: std::io::Error| {
            RetrieverError::Internal(format!("writing {}: {error}", self.path.display()))
        };
        self.file.write_all(lines.as_bytes()).map_err(write_error)?;
        self.file.sync_data().map_err(write_error)?;
        for (id, version) in deletes {
            let entry = self.newest.entry(id.clone()).or_insert(0);
            *entry = (*entry).max(*version);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_survive_a_reopen_and_keep_the_newest_version() {
        let directory = tempfile::tempdir().unwrap();
        {
            let mut tombstones = Tombstones::open(directory.path()).unwrap();
            tombstones.record(&[("a".to_string(), 5)]).unwrap();
            tombstones.record(&[("a".to_string(), 3)]).unwrap();
            tombstones.record(&[("b".to_string(), 7)]).unwrap();
        }
        let mut file = OpenOptions::new()
            .append(true)
            .open(directory.path().join("tombstones.jsonl"))
            .unwrap();
        file.write_all(b"{\"id\":\"c\",\"ver").unwrap();
        let mut reopened = Tombstones::open(directory.path()).unwrap();
        assert_eq!(reopened.version("a"), Some(5));
        assert_eq!(reopened.version("b"), Some(7));
        assert_eq!(reopened.version("c"), None);
        reopened.record(&[("d".to_string(), 9)]).unwrap();
        drop(reopened);
        let again = Tombstones::open(directory.path()).unwrap();
        assert_eq!(again.version("d"), Some(9));
    }
}
