//! A shard's vector index: usearch (cosine) over the document vectors, keyed by a 64-bit
//! hash of the document id. tantivy's stored vectors are the source of truth: the usearch
//! file is a cache saved with the tantivy commit it matches, loaded only when that commit is
//! still the latest, and rebuilt from tantivy otherwise (after a crash, say), so the two
//! indexes always agree. Small indexes are searched exactly, so that how a corpus is split
//! into shards cannot change which vectors are found.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::info;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::RetrieverError;

/// Up to this many vectors a search is exact (brute force); above it, HNSW.
pub const EXACT_SEARCH_MAX_VECTORS: usize = 50_000;
const INDEX_FILE: &str = "vectors.usearch";
const META_FILE: &str = "vectors.json";

/// The key of a document's vector.
pub fn vector_key(doc_id: &str) -> u64 {
    xxh3_64(doc_id.as_bytes())
}

/// What the saved usearch file matches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct VectorMeta {
    dimensions: usize,
    /// The tantivy commit opstamp the saved file reflects.
    opstamp: u64,
    vectors: usize,
}

/// The in-memory usearch index of a shard, created with the first vector's dimensions.
pub(crate) struct VectorIndex {
    directory: PathBuf,
    index: Option<Index>,
    dimensions: Option<usize>,
}

impl VectorIndex {
    /// An empty index that will live in `directory`.
    pub fn empty(directory: &Path) -> Self {
        Self {
            directory: directory.to_path_buf(),
            index: None,
            dimensions: None,
        }
    }

    /// Loads the saved index if it matches `opstamp`; `None` when it must be rebuilt.
    pub fn load_if_current(directory: &Path, opstamp: u64) -> Option<Self> {
        let meta_text = std::fs::read_to_string(directory.join(META_FILE)).ok()?;
        let meta: VectorMeta = serde_json::from_str(&meta_text).ok()?;
        if meta.opstamp != opstamp {
            info!(
                saved = meta.opstamp,
                current = opstamp,
                "vector index is stale, rebuilding"
            );
            return None;
        }
        let mut loaded = Self::empty(directory);
        if meta.vectors == 0 {
            return Some(loaded);
        }
        let index = new_index(meta.dimensions).ok()?;
        let path = directory.join(INDEX_FILE);
        index.load(path.to_str()?).ok()?;
        if index.size() != meta.vectors {
            return None;
        }
        loaded.dimensions = Some(meta.dimensions);
        loaded.index = Some(index);
        Some(loaded)
    }

    pub fn len(&self) -> usize {
        self.index.as_ref().map_or(0, Index::size)
    }

    pub fn dimensions(&self) -> Option<usize> {
        self.dimensions
    }

    /// Refuses a vector whose dimensions differ from the index's, or that is not finite.
    pub fn check(&self, vector: &[f32]) -> Result<(), RetrieverError> {
        if vector.iter().any(|value| !value.is_finite()) {
            return Err(RetrieverError::invalid(
                "vector",
                "has a value that is not finite",
            ));
        }
        match self.dimensions {
            Some(dimensions) if dimensions != vector.len() => Err(RetrieverError::invalid(
                "vector",
                format!(
                    "has {} dimensions, this shard's vectors have {dimensions}",
                    vector.len()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Adds or replaces the vector of `doc_id`.
    pub fn upsert(&mut self, doc_id: &str, vector: &[f32]) -> Result<(), RetrieverError> {
        self.check(vector)?;
        let key = vector_key(doc_id);
        let index = self.index_for(vector.len())?;
        if index.contains(key) {
            index.remove(key).map_err(usearch_error)?;
        }
        if index.size() + 1 > index.capacity() {
            index
                .reserve((index.capacity() * 2).max(1024))
                .map_err(usearch_error)?;
        }
        index.add(key, vector).map_err(usearch_error)
    }

    /// Removes the vector of `doc_id`, if any.
    pub fn remove(&mut self, doc_id: &str) -> Result<(), RetrieverError> {
        let key = vector_key(doc_id);
        if let Some(index) = &self.index {
            if index.contains(key) {
                index.remove(key).map_err(usearch_error)?;
            }
        }
        Ok(())
    }

    /// The `k` nearest keys with their cosine similarity, best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(f32, u64)>, RetrieverError> {
        let Some(index) = &self.index else {
            return Ok(Vec::new());
        };
        if k == 0 || index.size() == 0 {
            return Ok(Vec::new());
        }
        self.check(query)?;
        let count = k.min(index.size());
        let matches = if index.size() <= EXACT_SEARCH_MAX_VECTORS {
            index.exact_search(query, count)
        } else {
            index.change_expansion_search((2 * count).max(64));
            index.search(query, count)
        }
        .map_err(usearch_error)?;
        Ok(similarities(matches))
    }

    /// The `k` nearest of the vectors under `admitted` keys (a filter's documents), best
    /// first, every tie at the cut included. Exact — every admitted vector compared — when
    /// the index is small enough to be searched exactly or the admitted set is (as Qdrant
    /// does for a selective filter); otherwise the HNSW graph's own filtered search.
    pub fn search_among(
        &self,
        query: &[f32],
        k: usize,
        admitted: &[u64],
    ) -> Result<Vec<(f32, u64)>, RetrieverError> {
        self.search_among_exact_up_to(query, k, admitted, EXACT_SEARCH_MAX_VECTORS)
    }

    /// `search_among`, exact up to `exact_limit` vectors (a parameter for the tests).
    fn search_among_exact_up_to(
        &self,
        query: &[f32],
        k: usize,
        admitted: &[u64],
        exact_limit: usize,
    ) -> Result<Vec<(f32, u64)>, RetrieverError> {
        let Some(index) = &self.index else {
            return Ok(Vec::new());
        };
        if k == 0 || admitted.is_empty() || index.size() == 0 {
            return Ok(Vec::new());
        }
        self.check(query)?;
        if index.size() <= exact_limit || admitted.len() <= exact_limit {
            let query_norm = norm(query);
            let mut stored = vec![0.0f32; index.dimensions()];
            let mut scored = Vec::with_capacity(admitted.len());
            for key in admitted {
                if index.get(*key, &mut stored).map_err(usearch_error)? == 0 {
                    continue;
                }
                scored.push((cosine(query, query_norm, &stored), *key));
            }
            scored.sort_by(|left, right| right.0.total_cmp(&left.0));
            if let Some(cut) = scored.get(k.saturating_sub(1)).map(|entry| entry.0) {
                scored.retain(|entry| entry.0 >= cut);
            }
            return Ok(scored);
        }
        let admitted: std::collections::HashSet<u64> = admitted.iter().copied().collect();
        let count = k.min(admitted.len());
        index.change_expansion_search((2 * count).max(64));
        let matches = index
            .filtered_search(query, count, |key| admitted.contains(&key))
            .map_err(usearch_error)?;
        Ok(similarities(matches))
    }

    /// Saves the index with the tantivy commit it reflects.
    pub fn save(&self, opstamp: u64) -> Result<(), RetrieverError> {
        std::fs::create_dir_all(&self.directory).map_err(io_error)?;
        let path = self.directory.join(INDEX_FILE);
        if let Some(index) = &self.index {
            let path_text = path
                .to_str()
                .ok_or_else(|| RetrieverError::Internal("vector index path is not UTF-8".into()))?;
            index.save(path_text).map_err(usearch_error)?;
        }
        let meta = VectorMeta {
            dimensions: self.dimensions.unwrap_or(0),
            opstamp,
            vectors: self.len(),
        };
        let meta_text = serde_json::to_string(&meta)
            .map_err(|error| RetrieverError::Internal(error.to_string()))?;
        let temporary = self.directory.join(format!("{META_FILE}.tmp"));
        std::fs::write(&temporary, meta_text).map_err(io_error)?;
        std::fs::rename(&temporary, self.directory.join(META_FILE)).map_err(io_error)
    }

    fn index_for(&mut self, dimensions: usize) -> Result<&Index, RetrieverError> {
        if self.index.is_none() {
            let index = new_index(dimensions)?;
            index.reserve(1024).map_err(usearch_error)?;
            self.index = Some(index);
            self.dimensions = Some(dimensions);
        }
        self.index
            .as_ref()
            .ok_or_else(|| RetrieverError::Internal("vector index missing".to_string()))
    }
}

fn new_index(dimensions: usize) -> Result<Index, RetrieverError> {
    if dimensions == 0 {
        return Err(RetrieverError::invalid("vector", "must not be empty"));
    }
    let options = IndexOptions {
        dimensions,
        metric: MetricKind::Cos,
        quantization: ScalarKind::F32,
        connectivity: 16,
        expansion_add: 128,
        expansion_search: 64,
        multi: false,
    };
    Index::new(&options).map_err(usearch_error)
}

/// usearch's matches as (cosine similarity, key), best first.
fn similarities(matches: usearch::ffi::Matches) -> Vec<(f32, u64)> {
    matches
        .keys
        .into_iter()
        .zip(matches.distances)
        .map(|(key, distance)| (1.0 - distance, key))
        .collect()
}

fn norm(vector: &[f32]) -> f64 {
    vector
        .iter()
        .map(|value| f64::from(*value) * f64::from(*value))
        .sum::<f64>()
        .sqrt()
}

/// Cosine similarity, accumulated in f64.
fn cosine(query: &[f32], query_norm: f64, stored: &[f32]) -> f32 {
    let dot: f64 = query
        .iter()
        .zip(stored)
        .map(|(left, right)| f64::from(*left) * f64::from(*right))
        .sum();
    let denominator = query_norm * norm(stored);
    if denominator == 0.0 {
        return 0.0;
    }
    (dot / denominator) as f32
}

fn usearch_error(error: impl std::fmt::Display) -> RetrieverError {
    RetrieverError::Internal(format!("vector index: {error}"))
}

fn io_error(error: std::io::Error) -> RetrieverError {
    RetrieverError::Internal(format!("vector index file: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(values: &[f32]) -> Vec<f32> {
        let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        values.iter().map(|v| v / norm).collect()
    }

    #[test]
    fn finds_nearest_replaces_and_removes() {
        let directory = tempfile::tempdir().unwrap();
        let mut vectors = VectorIndex::empty(directory.path());
        vectors.upsert("a", &unit(&[1.0, 0.0, 0.0])).unwrap();
        vectors.upsert("b", &unit(&[0.0, 1.0, 0.0])).unwrap();
        vectors.upsert("c", &unit(&[1.0, 1.0, 0.0])).unwrap();
        let hits = vectors.search(&unit(&[1.0, 0.1, 0.0]), 2).unwrap();
        assert_eq!(hits[0].1, vector_key("a"));
        assert!((hits[0].0 - 0.995).abs() < 0.01);
        assert_eq!(hits[1].1, vector_key("c"));
        vectors.upsert("a", &unit(&[0.0, 0.0, 1.0])).unwrap();
        assert_eq!(vectors.len(), 3);
        assert_eq!(
            vectors.search(&unit(&[1.0, 0.1, 0.0]), 1).unwrap()[0].1,
            vector_key("c")
        );
        vectors.remove("c").unwrap();
        assert_eq!(vectors.len(), 2);
    }

    #[test]
    fn a_filtered_search_finds_only_admitted_vectors_exactly_and_through_the_graph() {
        let directory = tempfile::tempdir().unwrap();
        let mut vectors = VectorIndex::empty(directory.path());
        let mut rng = fastrand::Rng::with_seed(7);
        for id in 0..300 {
            let values: Vec<f32> = (0..8).map(|_| rng.f32() - 0.5).collect();
            vectors.upsert(&format!("d{id}"), &unit(&values)).unwrap();
        }
        let admitted: Vec<u64> = (0..300)
            .filter(|id| id % 3 == 0)
            .map(|id| vector_key(&format!("d{id}")))
            .collect();
        let query = unit(&[0.3, -0.2, 0.1, 0.4, -0.1, 0.2, 0.0, 0.1]);
        let exact = vectors.search_among(&query, 5, &admitted).unwrap();
        let graph = vectors
            .search_among_exact_up_to(&query, 5, &admitted, 0)
            .unwrap();
        // Every admitted vector compared: the exact answer is the best of the admitted set.
        let mut every: Vec<(f32, u64)> = admitted
            .iter()
            .map(|key| {
                let mut stored = vec![0.0f32; 8];
                vectors
                    .index
                    .as_ref()
                    .unwrap()
                    .get(*key, &mut stored)
                    .unwrap();
                let dot: f32 = stored.iter().zip(&query).map(|(a, b)| a * b).sum();
                (dot, *key)
            })
            .collect();
        every.sort_by(|left, right| right.0.total_cmp(&left.0));
        let keys = |list: &[(f32, u64)]| list.iter().map(|entry| entry.1).collect::<Vec<_>>();
        assert_eq!(keys(&exact[..5]), keys(&every[..5]));
        // The graph's filtered search keeps to the admitted set; on 300 vectors it finds
        // the same five.
        assert!(graph.iter().all(|entry| admitted.contains(&entry.1)));
        assert_eq!(keys(&graph), keys(&every[..5]));
        for ((left, _), (right, _)) in exact.iter().zip(&graph) {
            assert!((left - right).abs() < 1e-5);
        }
    }

    #[test]
    fn wrong_dimensions_and_non_finite_values_are_refused_naming_the_field() {
        let directory = tempfile::tempdir().unwrap();
        let mut vectors = VectorIndex::empty(directory.path());
        vectors.upsert("a", &[1.0, 0.0, 0.0]).unwrap();
        let error = vectors.upsert("b", &[1.0, 0.0]).unwrap_err();
        assert!(
            error.to_string().starts_with("vector: has 2 dimensions"),
            "{error}"
        );
        let error = vectors.upsert("b", &[f32::NAN, 0.0, 1.0]).unwrap_err();
        assert!(error.to_string().starts_with("vector:"), "{error}");
        assert!(vectors.search(&[1.0], 1).is_err());
    }

    #[test]
    fn a_saved_index_loads_only_for_its_own_commit() {
        let directory = tempfile::tempdir().unwrap();
        let mut vectors = VectorIndex::empty(directory.path());
        vectors.upsert("a", &unit(&[1.0, 2.0, 3.0])).unwrap();
        vectors.save(7).unwrap();
        let loaded = VectorIndex::load_if_current(directory.path(), 7).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded.dimensions(), Some(3));
        assert!(VectorIndex::load_if_current(directory.path(), 8).is_none());
    }
}
