//! One collection on one shard replica: the partitions of it this replica holds, each a
//! self-contained `Shard` (tantivy index, vector index, versions, tombstones) in
//! `partitions/<p>/` under the collection's directory. Moving a partition copies it and
//! dropping one deletes its directory, so every statistic stays exact.
//!
//! A request names the partitions to answer for (`Selection`): statistics are their sums,
//! searches rank across them by the same order every shard and the gateway use, and BM25
//! scores with the statistics of the whole selection when the caller sends none.
//!
//! A replica written before partitions existed holds one index for its whole shard; it is
//! split into its block's partitions when first opened (`convert_single_index`): documents
//! with their versions and vectors and the tombstones are re-added, nothing is re-embedded.
//! The split is built in `partitions.converting/`, renamed into place, and only then is the
//! old index removed, so a crash anywhere leaves one complete copy.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use quarry_kit::placement::Partitioning;
use tantivy::query::Query;
use tracing::{info, warn};

use crate::error::RetrieverError;
use crate::ranking::best_k;
use crate::shard::{IdVersion, Shard, ShardCandidate, StoredDocument};
use crate::statistics::CorpusStatistics;

const PARTITIONS_DIR: &str = "partitions";
const CONVERTING_DIR: &str = "partitions.converting";
/// What a replica's directory held before partitions: one index for the whole shard.
const SINGLE_INDEX_ENTRIES: [&str; 5] = [
    "tantivy",
    "usearch",
    "tombstones.jsonl",
    "tantivy.previous",
    "tantivy.converting",
];
/// Documents re-added per batch while splitting a single index.
const CONVERT_BATCH: usize = 512;

/// The partitions of one collection this replica holds.
pub struct PartitionedIndex {
    directory: PathBuf,
    shard: u32,
    replica: u32,
    writer_memory_bytes: usize,
    partitioning: Partitioning,
    parts: RwLock<BTreeMap<u32, Arc<Shard>>>,
    /// Serialises creating and dropping partitions.
    changing: std::sync::Mutex<()>,
}

impl PartitionedIndex {
    /// Opens the partitions under `directory` that `keep` allows (others are deleted),
    /// splitting a single index of an earlier version first.
    pub fn open(
        directory: &Path,
        shard: u32,
        replica: u32,
        writer_memory_bytes: usize,
        partitioning: Partitioning,
        keep: impl Fn(u32) -> bool,
    ) -> Result<Self, RetrieverError> {
        let index = Self {
            directory: directory.to_path_buf(),
            shard,
            replica,
            writer_memory_bytes,
            partitioning,
            parts: RwLock::new(BTreeMap::new()),
            changing: std::sync::Mutex::new(()),
        };
        index.convert_single_index()?;
        let root = directory.join(PARTITIONS_DIR);
        let mut parts = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let Some(partition) = entry.file_name().to_str().and_then(|n| n.parse().ok())
                else {
                    continue;
                };
                if partition >= partitioning.count() || !keep(partition) {
                    remove_dir(&entry.path(), "a partition this shard no longer holds");
                    continue;
                }
                parts.insert(partition, Arc::new(index.open_part(partition)?));
            }
        }
        if let Ok(mut held) = index.parts.write() {
            *held = parts;
        }
        Ok(index)
    }

    fn part_dir(&self, partition: u32) -> PathBuf {
        self.directory
            .join(PARTITIONS_DIR)
            .join(partition.to_string())
    }

    fn open_part(&self, partition: u32) -> Result<Shard, RetrieverError> {
        Shard::open(
            &self.part_dir(partition),
            self.shard,
            self.replica,
            self.writer_memory_bytes,
        )
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn replica(&self) -> u32 {
        self.replica
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The partitions held, ascending.
    pub fn held(&self) -> Vec<u32> {
        self.parts
            .read()
            .map(|parts| parts.keys().copied().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, partition: u32) -> Option<Arc<Shard>> {
        self.parts.read().ok()?.get(&partition).cloned()
    }

    /// The partition, created empty when not held yet.
    pub fn get_or_create(&self, partition: u32) -> Result<Arc<Shard>, RetrieverError> {
        if partition >= self.partitioning.count() {
            return Err(RetrieverError::invalid(
                "partition",
                format!(
                    "{partition} is out of range 0..{}",
                    self.partitioning.count()
                ),
            ));
        }
        if let Some(part) = self.get(partition) {
            return Ok(part);
        }
        let _changing = self.lock_changes()?;
        if let Some(part) = self.get(partition) {
            return Ok(part);
        }
        let part = Arc::new(self.open_part(partition)?);
        if let Ok(mut parts) = self.parts.write() {
            parts.insert(partition, Arc::clone(&part));
        }
        Ok(part)
    }

    /// `get_or_create` on the blocking pool (opening an index reads files).
    pub async fn get_or_create_async(
        self: &Arc<Self>,
        partition: u32,
    ) -> Result<Arc<Shard>, RetrieverError> {
        if let Some(part) = self.get(partition) {
            return Ok(part);
        }
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.get_or_create(partition))
            .await
            .map_err(|error| RetrieverError::Internal(format!("opening a partition: {error}")))?
    }

    /// Closes the partition and deletes its files.
    pub fn drop_partition(&self, partition: u32) -> Result<(), RetrieverError> {
        let _changing = self.lock_changes()?;
        let removed = self
            .parts
            .write()
            .ok()
            .and_then(|mut parts| parts.remove(&partition));
        // Searches holding it finish first: the directory goes once the last handle does.
        drop(removed);
        let path = self.part_dir(partition);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|error| RetrieverError::Open {
                path: path.display().to_string(),
                reason: error.to_string(),
            })?;
            info!(
                shard = self.shard,
                replica = self.replica,
                partition,
                directory = %self.directory.display(),
                "partition dropped"
            );
        }
        Ok(())
    }

    fn lock_changes(&self) -> Result<std::sync::MutexGuard<'_, ()>, RetrieverError> {
        self.changing
            .lock()
            .map_err(|_| RetrieverError::Internal("partition lock poisoned".to_string()))
    }

    /// The held partitions among `partitions` (absent ones hold nothing yet).
    pub fn select(&self, partitions: &[u32]) -> Selection {
        let parts = self
            .parts
            .read()
            .map(|held| {
                partitions
                    .iter()
                    .filter_map(|partition| held.get(partition).cloned())
                    .collect()
            })
            .unwrap_or_default();
        Selection { parts }
    }

    /// Every held partition.
    pub fn select_all(&self) -> Selection {
        Selection {
            parts: self
                .parts
                .read()
                .map(|held| held.values().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// Writes documents, each into its partition (created when new), where `fence` allows
    /// writing that partition (asked while holding its writer).
    pub fn upsert(
        &self,
        documents: Vec<StoredDocument>,
        fence: &dyn Fn(u32) -> Result<(), RetrieverError>,
    ) -> Result<u64, RetrieverError> {
        let mut by_partition: BTreeMap<u32, Vec<StoredDocument>> = BTreeMap::new();
        for document in documents {
            let partition = self.partitioning.partition_of(&document.id);
            by_partition.entry(partition).or_default().push(document);
        }
        let mut accepted = 0;
        for (partition, documents) in by_partition {
            fence(partition)?;
            accepted += self
                .get_or_create(partition)?
                .upsert_fenced(&documents, &|| fence(partition))?;
        }
        Ok(accepted)
    }

    /// Applies deletes with their versions, each in its partition, where `fence` allows.
    pub fn apply_deletes(
        &self,
        deletes: Vec<(String, u64)>,
        fence: &dyn Fn(u32) -> Result<(), RetrieverError>,
    ) -> Result<u64, RetrieverError> {
        let mut by_partition: BTreeMap<u32, Vec<(String, u64)>> = BTreeMap::new();
        for (id, version) in deletes {
            let partition = self.partitioning.partition_of(&id);
            by_partition
                .entry(partition)
                .or_default()
                .push((id, version));
        }
        let mut present = 0;
        for (partition, deletes) in by_partition {
            fence(partition)?;
            present += self
                .get_or_create(partition)?
                .apply_deletes_fenced(&deletes, &|| fence(partition))?;
        }
        Ok(present)
    }

    /// The stored documents with these ids, in order; ids not held are left out.
    pub fn fetch(&self, ids: &[String]) -> Result<Vec<StoredDocument>, RetrieverError> {
        let mut documents = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(part) = self.get(self.partitioning.partition_of(id)) else {
                continue;
            };
            documents.extend(part.fetch(std::slice::from_ref(id))?);
        }
        Ok(documents)
    }

    /// Saves every partition's vector index (on a graceful stop).
    pub fn persist_vectors(&self) -> Result<(), RetrieverError> {
        for part in self.select_all().parts {
            part.persist_vectors()?;
        }
        Ok(())
    }

    /// Splits the one index of a replica written before partitions into its partitions.
    fn convert_single_index(&self) -> Result<(), RetrieverError> {
        let single = self.directory.join("tantivy");
        let partitions = self.directory.join(PARTITIONS_DIR);
        if partitions.exists() {
            // Converted; a crash may have left the old index behind.
            if single.exists() {
                self.remove_single_index();
            }
            return Ok(());
        }
        if !single.exists() {
            return Ok(());
        }
        let converting = self.directory.join(CONVERTING_DIR);
        if converting.exists() {
            remove_dir(&converting, "an unfinished split");
        }
        let old = Shard::open(
            &self.directory,
            self.shard,
            self.replica,
            self.writer_memory_bytes,
        )?;
        let versions = old.versions()?;
        let mut parts: HashMap<u32, Shard> = HashMap::new();
        let open_part = |partition: u32| {
            Shard::open(
                &converting.join(partition.to_string()),
                self.shard,
                self.replica,
                self.writer_memory_bytes,
            )
        };
        fn part<'a>(
            parts: &'a mut HashMap<u32, Shard>,
            partition: u32,
            open: &dyn Fn(u32) -> Result<Shard, RetrieverError>,
        ) -> Result<&'a Shard, RetrieverError> {
            Ok(match parts.entry(partition) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => entry.insert(open(partition)?),
            })
        }
        let (documents, deletes): (Vec<&IdVersion>, Vec<&IdVersion>) =
            versions.iter().partition(|entry| !entry.deleted);
        for chunk in documents.chunks(CONVERT_BATCH) {
            let ids: Vec<String> = chunk.iter().map(|entry| entry.id.clone()).collect();
            let mut by_partition: BTreeMap<u32, Vec<StoredDocument>> = BTreeMap::new();
            for document in old.fetch(&ids)? {
                let partition = self.partitioning.partition_of(&document.id);
                by_partition.entry(partition).or_default().push(document);
            }
            for (partition, documents) in by_partition {
                part(&mut parts, partition, &open_part)?.upsert(&documents)?;
            }
        }
        let mut deletes_by_partition: BTreeMap<u32, Vec<(String, u64)>> = BTreeMap::new();
        for entry in deletes {
            let partition = self.partitioning.partition_of(&entry.id);
            deletes_by_partition
                .entry(partition)
                .or_default()
                .push((entry.id.clone(), entry.version));
        }
        for (partition, deletes) in deletes_by_partition {
            part(&mut parts, partition, &open_part)?.apply_deletes(&deletes)?;
        }
        for part in parts.values() {
            part.persist_vectors()?;
        }
        drop(parts);
        drop(old);
        std::fs::create_dir_all(&converting)
            .and_then(|()| std::fs::rename(&converting, &partitions))
            .map_err(|error| RetrieverError::Open {
                path: partitions.display().to_string(),
                reason: error.to_string(),
            })?;
        info!(
            shard = self.shard,
            replica = self.replica,
            documents = documents.len(),
            directory = %self.directory.display(),
            "split the single index into partitions"
        );
        self.remove_single_index();
        Ok(())
    }

    fn remove_single_index(&self) {
        for entry in SINGLE_INDEX_ENTRIES {
            let path = self.directory.join(entry);
            let removed = match path.is_dir() {
                true => std::fs::remove_dir_all(&path),
                false => std::fs::remove_file(&path),
            };
            if let Err(error) = removed {
                if error.kind() != std::io::ErrorKind::NotFound {
                    warn!(path = %path.display(), error = %error, "could not remove the old single index");
                }
            }
        }
    }
}

fn remove_dir(path: &Path, what: &str) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => info!(path = %path.display(), "removed {what}"),
        Err(error) => warn!(path = %path.display(), error = %error, "could not remove {what}"),
    }
}

/// The partitions one request answers for.
pub struct Selection {
    parts: Vec<Arc<Shard>>,
}

impl Selection {
    pub fn num_docs(&self) -> u64 {
        self.parts.iter().map(|part| part.num_docs()).sum()
    }

    pub fn num_vectors(&self) -> u64 {
        self.parts.iter().map(|part| part.num_vectors()).sum()
    }

    /// Summed statistics of the queries' terms.
    pub fn collect_statistics_of(
        &self,
        queries: &[&str],
    ) -> Result<CorpusStatistics, RetrieverError> {
        let mut total = CorpusStatistics::default();
        for part in &self.parts {
            total.add(&part.collect_statistics_of(queries)?);
        }
        Ok(total)
    }

    /// The statistics to score with: `global` when sent, else (several partitions) the
    /// selection's own sums, so that scores never depend on how it is partitioned.
    pub fn scoring_statistics(
        &self,
        global: Option<CorpusStatistics>,
        queries: &[&str],
    ) -> Result<Option<CorpusStatistics>, RetrieverError> {
        match global {
            Some(global) => Ok(Some(global)),
            None if self.parts.len() > 1 => Ok(Some(self.collect_statistics_of(queries)?)),
            None => Ok(None),
        }
    }

    /// The best `k` by BM25 across the selection.
    pub fn search_keyword(
        &self,
        query: &str,
        k: usize,
        global: Option<&CorpusStatistics>,
        filter: Option<&dyn Query>,
    ) -> Result<Vec<ShardCandidate>, RetrieverError> {
        let mut candidates = Vec::new();
        for part in &self.parts {
            candidates.extend(part.search_keyword(query, k, global, filter)?);
        }
        Ok(best_k(candidates, k))
    }

    /// The `k` nearest vectors across the selection.
    pub fn search_vector(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&dyn Query>,
    ) -> Result<Vec<ShardCandidate>, RetrieverError> {
        let mut candidates = Vec::new();
        for part in &self.parts {
            candidates.extend(part.search_vector(query, k, filter)?);
        }
        Ok(best_k(candidates, k))
    }

    /// The newest write of every id in the selection, by id.
    pub fn versions(&self) -> Result<Vec<IdVersion>, RetrieverError> {
        let mut versions = Vec::new();
        for part in &self.parts {
            versions.extend(part.versions()?);
        }
        versions.sort_by(|left, right| left.id.cmp(&right.id));
        Ok(versions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(id: &str, version: u64) -> StoredDocument {
        StoredDocument {
            id: id.to_string(),
            title: id.to_string(),
            text: format!("text of {id} at {version}"),
            vector: vec![1.0, version as f32, 0.5],
            version,
            ..StoredDocument::default()
        }
    }

    #[test]
    fn a_single_index_of_an_earlier_version_is_split_into_its_partitions() {
        let directory = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..60).map(|number| format!("doc-{number}")).collect();
        {
            let single = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
            let documents: Vec<StoredDocument> = ids.iter().map(|id| document(id, 5)).collect();
            single.upsert(&documents).unwrap();
            single.delete(&ids[..10], 9).unwrap();
            single.persist_vectors().unwrap();
        }
        let partitioning = Partitioning::new(1, Some(4)).unwrap();
        let index =
            PartitionedIndex::open(directory.path(), 0, 0, 20_000_000, partitioning, |_| true)
                .unwrap();
        assert!(
            !directory.path().join("tantivy").exists(),
            "the single index is gone"
        );
        let all = index.select_all();
        assert_eq!(all.num_docs(), 50);
        assert_eq!(all.num_vectors(), 50);
        // Every id sits in its own partition, with its version; the deletes came along.
        for part in index.held() {
            let versions = index.select(&[part]).versions().unwrap();
            assert!(versions
                .iter()
                .all(|entry| partitioning.partition_of(&entry.id) == part));
        }
        let versions = all.versions().unwrap();
        assert_eq!(versions.len(), 60);
        for entry in &versions {
            let deleted = ids[..10].contains(&entry.id);
            assert_eq!(entry.deleted, deleted, "{}", entry.id);
            assert_eq!(entry.version, if deleted { 9 } else { 5 });
        }
        let fetched = index.fetch(&ids[10..12]).unwrap();
        assert_eq!(fetched[0], document(&ids[10], 5));
        // Opened again: nothing to convert, the same content.
        drop(all);
        drop(index);
        let again =
            PartitionedIndex::open(directory.path(), 0, 0, 20_000_000, partitioning, |_| true)
                .unwrap();
        assert_eq!(again.select_all().num_docs(), 50);
        // A partition the placement no longer keeps here is deleted on open.
        drop(again);
        let kept =
            PartitionedIndex::open(directory.path(), 0, 0, 20_000_000, partitioning, |p| p == 0)
                .unwrap();
        assert!(kept.held().iter().all(|partition| *partition == 0));
    }
}
