//! The record of deletes (tombstones) that lets a replica refuse a write older than a delete
//! it has applied (versions come from `quarry_kit::VersionClock`: microseconds since the
//! epoch). Tombstones live in an append-only file beside the index, each line fsynced
//! before the delete is acknowledged.
//!
//! A tombstone of a document the replica held is kept for good (one short line per deleted
//! id): it stops a recovering peer from bringing the document back. A tombstone of an id the
//! replica did not hold (`absent`) only has to outlive writes still in flight, so it expires
//! after `ABSENT_RETENTION` — like Elasticsearch's `index.gc_deletes` — and the file is
//! rewritten without the expired ones once they are many: deletes of ids that never existed
//! do not grow a shard without bound.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::RetrieverError;

/// How long a tombstone of an id the replica did not hold is kept: far beyond any write's
/// time in flight (`gateway.write_timeout_ms` is a minute).
pub const ABSENT_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);

/// Microseconds since the Unix epoch by the wall clock, what expiry is measured against.
pub fn wall_clock_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// Expired absent tombstones that make a rewrite of the file worth it.
const COMPACT_AFTER: usize = 4096;

#[derive(Serialize, Deserialize)]
struct TombstoneLine {
    id: String,
    version: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    absent: bool,
}

/// One delete to record: the id, its version, and whether the replica held no such id.
#[derive(Debug, Clone)]
pub struct Delete {
    pub id: String,
    pub version: u64,
    pub absent: bool,
}

/// The newest delete of every deleted id, on disk and in memory.
pub struct Tombstones {
    path: PathBuf,
    file: File,
    /// Id → (version, absent).
    newest: HashMap<String, (u64, bool)>,
    /// Absent tombstones recorded, oldest first, for expiry.
    absent: std::collections::VecDeque<(u64, String)>,
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
        let mut tombstones = Self {
            path,
            file,
            newest: HashMap::new(),
            absent: std::collections::VecDeque::new(),
        };
        for line in content[..complete].split(|byte| *byte == b'\n') {
            let Ok(line) = serde_json::from_slice::<TombstoneLine>(line) else {
                continue;
            };
            tombstones.remember(line.id, line.version, line.absent);
        }
        let mut ordered: Vec<_> = tombstones.absent.drain(..).collect();
        ordered.sort();
        tombstones.absent = ordered.into();
        Ok(tombstones)
    }

    fn remember(&mut self, id: String, version: u64, absent: bool) {
        let entry = self.newest.entry(id.clone()).or_insert((0, absent));
        if version >= entry.0 {
            // A newer delete of a held document keeps the tombstone for good.
            *entry = (version, absent && (entry.0 == 0 || entry.1));
            if entry.1 {
                self.absent.push_back((version, id));
            }
        }
    }

    /// Tombstones kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.newest.len()
    }

    /// Drops absent tombstones older than `ABSENT_RETENTION` before `now_us`; rewrites the
    /// file when enough have expired. Returns how many were dropped.
    pub fn expire(&mut self, now_us: u64) -> Result<usize, RetrieverError> {
        let horizon = now_us.saturating_sub(ABSENT_RETENTION.as_micros() as u64);
        let expired = self
            .absent
            .iter()
            .take_while(|(version, _)| *version < horizon)
            .count();
        if expired < COMPACT_AFTER {
            return Ok(0);
        }
        let mut dropped = 0;
        for (version, id) in self.absent.drain(..expired) {
            // Dropped only if this is still the id's newest delete and it is still absent.
            if self.newest.get(&id) == Some(&(version, true)) {
                self.newest.remove(&id);
                dropped += 1;
            }
        }
        self.rewrite()?;
        Ok(dropped)
    }

    /// Writes the kept tombstones to a new file, fsyncs it and renames it over the old one.
    fn rewrite(&mut self) -> Result<(), RetrieverError> {
        let write_error = |error: std::io::Error| {
            RetrieverError::Internal(format!("rewriting {}: {error}", self.path.display()))
        };
        let mut lines = String::new();
        for (id, (version, absent)) in &self.newest {
            let line = TombstoneLine {
                id: id.clone(),
                version: *version,
                absent: *absent,
            };
            lines.push_str(
                &serde_json::to_string(&line)
                    .map_err(|error| RetrieverError::Internal(error.to_string()))?,
            );
            lines.push('\n');
        }
        let partial = self.path.with_extension("jsonl.partial");
        let mut file = File::create(&partial).map_err(write_error)?;
        file.write_all(lines.as_bytes()).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        std::fs::rename(&partial, &self.path).map_err(write_error)?;
        if let Some(directory) = self.path.parent() {
            File::open(directory)
                .and_then(|directory| directory.sync_all())
                .map_err(write_error)?;
        }
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(write_error)?;
        Ok(())
    }

    /// The version of the newest delete of `id`, if it was ever deleted.
    pub fn version(&self, id: &str) -> Option<u64> {
        self.newest.get(id).map(|(version, _)| *version)
    }

    /// Every tombstone: id and version.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.newest
            .iter()
            .map(|(id, (version, _))| (id.as_str(), *version))
    }

    /// Records deletes durably (written and fsynced) before they take effect.
    pub fn record(&mut self, deletes: &[Delete]) -> Result<(), RetrieverError> {
        let mut lines = String::new();
        for delete in deletes {
            if self
                .version(&delete.id)
                .is_some_and(|known| known >= delete.version)
            {
                continue;
            }
            let line = TombstoneLine {
                id: delete.id.clone(),
                version: delete.version,
                absent: delete.absent,
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
        for delete in deletes {
            self.remember(delete.id.clone(), delete.version, delete.absent);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: &str, version: u64) -> Delete {
        Delete {
            id: id.to_string(),
            version,
            absent: false,
        }
    }

    fn absent(id: &str, version: u64) -> Delete {
        Delete {
            absent: true,
            ..held(id, version)
        }
    }

    #[test]
    fn deletes_of_ids_never_held_expire_and_shrink_the_file_while_real_ones_stay() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("tombstones.jsonl");
        let hour_us = ABSENT_RETENTION.as_micros() as u64;
        let start = 10 * hour_us;
        let mut tombstones = Tombstones::open(directory.path()).unwrap();
        tombstones.record(&[held("kept", start)]).unwrap();
        // A held id deleted again while absent keeps its tombstone for good.
        tombstones.record(&[absent("kept", start + 1)]).unwrap();
        let never: Vec<Delete> = (0..3 * COMPACT_AFTER)
            .map(|n| absent(&format!("never-{n}"), start + 2 + n as u64))
            .collect();
        for chunk in never.chunks(1000) {
            tombstones.record(chunk).unwrap();
        }
        let grown = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            tombstones.expire(start + hour_us / 2).unwrap(),
            0,
            "nothing is old yet"
        );
        let dropped = tombstones.expire(start + 2 * hour_us).unwrap();
        assert_eq!(dropped, 3 * COMPACT_AFTER);
        assert_eq!(tombstones.len(), 1);
        assert_eq!(tombstones.version("kept"), Some(start + 1));
        assert!(std::fs::metadata(&path).unwrap().len() * 100 < grown);
        tombstones
            .record(&[held("after", start + 5 * hour_us)])
            .unwrap();
        drop(tombstones);
        let reopened = Tombstones::open(directory.path()).unwrap();
        assert_eq!(reopened.len(), 2);
        assert_eq!(reopened.version("never-0"), None);
        assert_eq!(reopened.version("after"), Some(start + 5 * hour_us));
    }

    #[test]
    fn tombstones_survive_a_reopen_and_keep_the_newest_version() {
        let directory = tempfile::tempdir().unwrap();
        {
            let mut tombstones = Tombstones::open(directory.path()).unwrap();
            tombstones.record(&[held("a", 5)]).unwrap();
            tombstones.record(&[held("a", 3)]).unwrap();
            tombstones.record(&[held("b", 7)]).unwrap();
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
        reopened.record(&[held("d", 9)]).unwrap();
        drop(reopened);
        let again = Tombstones::open(directory.path()).unwrap();
        assert_eq!(again.version("d"), Some(9));
    }
}
