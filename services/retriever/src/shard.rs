//! A shard replica's plain Rust API over its tantivy index: upsert and delete by id (each
//! call committed, hence durable, before it returns), fetch, statistics, and BM25 search
//! scored with cluster-wide statistics. Every write carries a version; a replica keeps the
//! newest write of each id, counting deletes (tombstones), so writes can arrive in any order
//! or twice (a peer's catch-up copy and a live write) and every replica ends the same.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term,
};
use tracing::{info, warn};

use crate::conversion::convert_older_schema;
use crate::error::RetrieverError;
use crate::filter::MatchingKeys;
use crate::metrics::{metrics, replica_labels};
use crate::ranking::{best_k, top_with_ties, TopByScoreThenKey};
use crate::schema::{
    build_document, build_schema, stored_text, stored_u64, stored_vector, FastIds, ShardFields,
    VECTOR_KEY_FIELD,
};
use crate::statistics::{CorpusStatistics, GlobalStatisticsProvider};
use crate::vectors::VectorIndex;
use crate::versions::{wall_clock_us, Delete, Tombstones};
use quarry_kit::VersionClock;

/// How often, at most, the vector index is saved while writes go on (it is also saved on
/// a graceful stop; after a crash it is rebuilt from tantivy).
const VECTOR_SAVE_INTERVAL: Duration = Duration::from_secs(30);

/// Most distinct terms of one query that are scored; the rest are ignored.
const MAX_QUERY_TERMS: usize = 64;

/// A document as the shard stores it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoredDocument {
    pub id: String,
    pub title: String,
    pub text: String,
    /// A JSON object; its fields are indexed for filters.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The document's embedding; empty when it has none.
    pub vector: Vec<f32>,
    /// The write's version; 0 on the way in lets the shard stamp it with its own clock.
    pub version: u64,
}

/// The newest write this replica holds for one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdVersion {
    pub id: String,
    pub version: u64,
    /// The newest write was a delete.
    pub deleted: bool,
}

/// One ranked candidate: its id and raw score (stored fields are fetched separately).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardCandidate {
    pub doc_id: String,
    pub score: f64,
}

/// One shard replica: its index, a reader, and the single writer.
pub struct Shard {
    shard: u32,
    replica: u32,
    data_dir: PathBuf,
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: ShardFields,
    vectors: RwLock<VectorIndex>,
    vectors_saved: Mutex<Instant>,
    /// Taken after the writer lock, never before it (as is `vectors` for writing).
    tombstones: Mutex<Tombstones>,
    clock: VersionClock,
}

impl Shard {
    /// Opens the shard's index under `data_dir`, creating it when absent.
    pub fn open(
        data_dir: &Path,
        shard: u32,
        replica: u32,
        writer_memory_bytes: usize,
    ) -> Result<Self, RetrieverError> {
        let index_dir = data_dir.join("tantivy");
        let open_error = |reason: String| RetrieverError::Open {
            path: index_dir.display().to_string(),
            reason,
        };
        let (schema, fields) = build_schema();
        let converted = convert_older_schema(data_dir, &schema, &fields)?;
        std::fs::create_dir_all(&index_dir).map_err(|error| open_error(error.to_string()))?;
        let directory =
            MmapDirectory::open(&index_dir).map_err(|error| open_error(error.to_string()))?;
        let index = Index::open_or_create(directory, schema)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        // One indexing thread: a replica holds many partitions, each with its own writer.
        let writer = index.writer_with_num_threads(1, writer_memory_bytes)?;
        let opstamp = index.load_metas()?.opstamp;
        let vectors_dir = data_dir.join("usearch");
        let saved = match converted {
            true => None,
            false => VectorIndex::load_if_current(&vectors_dir, opstamp),
        };
        let vectors = match saved {
            Some(loaded) => loaded,
            None => {
                let rebuilt = rebuild_vectors(&reader.searcher(), &fields, &vectors_dir)?;
                rebuilt.save(opstamp)?;
                rebuilt
            }
        };
        let tombstones = Tombstones::open(data_dir)?;
        let shard_replica = Self {
            shard,
            replica,
            data_dir: data_dir.to_path_buf(),
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            vectors: RwLock::new(vectors),
            vectors_saved: Mutex::new(Instant::now()),
            tombstones: Mutex::new(tombstones),
            clock: VersionClock::default(),
        };
        shard_replica.apply_recorded_deletes()?;
        info!(
            shard,
            replica,
            docs = shard_replica.num_docs(),
            vectors = shard_replica.num_vectors(),
            path = %data_dir.display(),
            "shard opened"
        );
        Ok(shard_replica)
    }

    /// Vectors in the vector index.
    pub fn num_vectors(&self) -> u64 {
        self.vectors
            .read()
            .map_or(0, |vectors| vectors.len() as u64)
    }

    /// Saves the vector index with the commit it matches (on a graceful stop).
    pub fn persist_vectors(&self) -> Result<(), RetrieverError> {
        let opstamp = self.index.load_metas()?.opstamp;
        self.read_vectors()?.save(opstamp)
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn replica(&self) -> u32 {
        self.replica
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The field metadata filters query.
    #[cfg(test)]
    pub(crate) fn meta_field(&self) -> tantivy::schema::Field {
        self.fields.meta
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Inserts or replaces documents by id, unless this replica already holds a newer write
    /// of the id (a document or a delete); returns once they are committed to disk, with how
    /// many documents were accepted (superseded ones included: they are already outdated).
    pub fn upsert(&self, documents: &[StoredDocument]) -> Result<u64, RetrieverError> {
        self.upsert_fenced(documents, &|| Ok(()))
    }

    /// `upsert`, once `fence` allows it, asked while holding the writer: a write either
    /// commits before anything that takes the writer after (`versions_settled`), or sees
    /// what changed first.
    pub fn upsert_fenced(
        &self,
        documents: &[StoredDocument],
        fence: &dyn Fn() -> Result<(), RetrieverError>,
    ) -> Result<u64, RetrieverError> {
        for document in documents {
            validate_document(document)?;
        }
        self.check_vectors(documents)?;
        let mut writer = self.lock_writer()?;
        fence()?;
        let searcher = self.reader.searcher();
        let mut newest: HashMap<&str, u64> = HashMap::new();
        let mut applied = Vec::with_capacity(documents.len());
        {
            let tombstones = self.lock_tombstones()?;
            for document in documents {
                let version = self.stamp(document.version);
                let current = match newest.get(document.id.as_str()) {
                    Some(version) => Some(*version),
                    None => self
                        .stored_version(&searcher, &document.id)?
                        .max(tombstones.version(&document.id)),
                };
                if current.is_some_and(|current| current >= version) {
                    continue;
                }
                newest.insert(&document.id, version);
                applied.push((document, version));
            }
        }
        for (document, version) in &applied {
            writer.delete_term(Term::from_field_text(self.fields.id, &document.id));
            writer.add_document(build_document(&self.fields, document, *version)?)?;
        }
        let opstamp = self.commit(&mut writer)?;
        self.reader.reload()?;
        // The vector index follows the commit before the writer is released, so writes of
        // one id land in both indexes in the same order.
        {
            let mut vectors = self.write_vectors()?;
            for (document, _) in &applied {
                if document.vector.is_empty() {
                    vectors.remove(&document.id)?;
                } else {
                    vectors.upsert(&document.id, &document.vector)?;
                }
            }
        }
        drop(writer);
        self.save_vectors_now_and_then(opstamp);
        Ok(documents.len() as u64)
    }

    /// Commits the writer (written and fsynced), timing it into the commit histogram.
    fn commit(&self, writer: &mut IndexWriter) -> Result<u64, RetrieverError> {
        let started = Instant::now();
        let opstamp = writer.commit()?;
        let labels = replica_labels(self.shard, self.replica);
        metrics()
            .commit_duration
            .with_label_values(&[labels[0].as_str(), labels[1].as_str()])
            .observe(started.elapsed().as_secs_f64());
        Ok(opstamp)
    }

    /// A write's version: its own, or this replica's clock's when it has none.
    fn stamp(&self, version: u64) -> u64 {
        if version == 0 {
            self.clock.next()
        } else {
            self.clock.observe(version);
            version
        }
    }

    /// The version of the document stored under `id`, if there is one.
    fn stored_version(&self, searcher: &Searcher, id: &str) -> Result<Option<u64>, RetrieverError> {
        Ok(self
            .find_by_id(searcher, id)?
            .map(|document| stored_u64(&document, self.fields.version)))
    }

    /// `versions`, after every write that holds the writer now has committed.
    pub fn versions_settled(&self) -> Result<Vec<IdVersion>, RetrieverError> {
        let _writer = self.lock_writer()?;
        self.versions()
    }

    /// The newest write of every id this replica holds or has deleted.
    pub fn versions(&self) -> Result<Vec<IdVersion>, RetrieverError> {
        let searcher = self.reader.searcher();
        let mut newest: HashMap<String, IdVersion> = HashMap::new();
        for_each_live_document(&searcher, |document| {
            let id = stored_text(document, self.fields.id);
            let version = stored_u64(document, self.fields.version);
            newest.insert(
                id.clone(),
                IdVersion {
                    id,
                    version,
                    deleted: false,
                },
            );
            Ok(())
        })?;
        for (id, version) in self.lock_tombstones()?.iter() {
            if newest.get(id).is_some_and(|live| live.version >= version) {
                continue;
            }
            newest.insert(
                id.to_string(),
                IdVersion {
                    id: id.to_string(),
                    version,
                    deleted: true,
                },
            );
        }
        let mut versions: Vec<IdVersion> = newest.into_values().collect();
        versions.sort_by(|left, right| left.id.cmp(&right.id));
        Ok(versions)
    }

    /// All vectors of a batch agree with each other and with the index's dimensions.
    fn check_vectors(&self, documents: &[StoredDocument]) -> Result<(), RetrieverError> {
        let vectors = self.read_vectors()?;
        let mut batch_dimensions = vectors.dimensions();
        for document in documents
            .iter()
            .filter(|document| !document.vector.is_empty())
        {
            vectors.check(&document.vector)?;
            let dimensions = *batch_dimensions.get_or_insert(document.vector.len());
            if dimensions != document.vector.len() {
                return Err(RetrieverError::invalid(
                    "vector",
                    format!(
                        "document {:?} has {} dimensions, others have {dimensions}",
                        document.id,
                        document.vector.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn save_vectors_now_and_then(&self, opstamp: u64) {
        let Ok(mut saved) = self.vectors_saved.lock() else {
            return;
        };
        if saved.elapsed() < VECTOR_SAVE_INTERVAL {
            return;
        }
        *saved = Instant::now();
        match self
            .read_vectors()
            .and_then(|vectors| vectors.save(opstamp))
        {
            Ok(()) => {}
            Err(error) => {
                warn!(error = %error, "saving the vector index failed; it will be rebuilt on start")
            }
        }
    }

    /// The `k` documents whose vectors are nearest to `query`, by cosine similarity; with a
    /// filter, the nearest among the documents it admits.
    pub fn search_vector(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&dyn Query>,
    ) -> Result<Vec<ShardCandidate>, RetrieverError> {
        let searcher = self.reader.searcher();
        let nearest = match filter {
            None => {
                let vectors = self.read_vectors()?;
                top_with_ties(k, |limit| vectors.search(query, limit))?
            }
            Some(filter) => {
                let admitted = searcher.search(filter, &MatchingKeys)?;
                let vectors = self.read_vectors()?;
                vectors.search_among(query, k, &admitted)?
            }
        };
        let mut ids = FastIds::default();
        let mut candidates = Vec::with_capacity(nearest.len());
        for (similarity, key) in nearest {
            let query = TermQuery::new(
                Term::from_field_u64(self.fields.vector_key, key),
                IndexRecordOption::Basic,
            );
            let top = searcher.search(&query, &TopDocs::with_limit(1).order_by_score())?;
            let Some((_, address)) = top.first() else {
                continue;
            };
            candidates.push(ShardCandidate {
                doc_id: ids.id(&searcher, *address)?,
                score: f64::from(similarity),
            });
        }
        Ok(best_k(candidates, k))
    }

    fn read_vectors(&self) -> Result<std::sync::RwLockReadGuard<'_, VectorIndex>, RetrieverError> {
        self.vectors
            .read()
            .map_err(|_| RetrieverError::Internal("vector index lock poisoned".to_string()))
    }

    fn write_vectors(
        &self,
    ) -> Result<std::sync::RwLockWriteGuard<'_, VectorIndex>, RetrieverError> {
        self.vectors
            .write()
            .map_err(|_| RetrieverError::Internal("vector index lock poisoned".to_string()))
    }

    /// Deletes documents by id at one version (0: stamped here); returns how many of them
    /// were present and older than the delete.
    pub fn delete(&self, ids: &[String], version: u64) -> Result<u64, RetrieverError> {
        let version = self.stamp(version);
        let deletes: Vec<(String, u64)> = ids.iter().map(|id| (id.clone(), version)).collect();
        self.apply_deletes(&deletes)
    }

    /// Applies deletes, each with its version: the tombstone is made durable first, then a
    /// stored document older than it is removed; a newer one stands.
    pub fn apply_deletes(&self, deletes: &[(String, u64)]) -> Result<u64, RetrieverError> {
        self.apply_deletes_fenced(deletes, &|| Ok(()))
    }

    /// `apply_deletes`, once `fence` allows it (asked while holding the writer).
    pub fn apply_deletes_fenced(
        &self,
        deletes: &[(String, u64)],
        fence: &dyn Fn() -> Result<(), RetrieverError>,
    ) -> Result<u64, RetrieverError> {
        let mut writer = self.lock_writer()?;
        fence()?;
        let searcher = self.reader.searcher();
        let mut present = 0;
        let mut effective = Vec::with_capacity(deletes.len());
        for (id, version) in deletes {
            self.clock.observe(*version);
            let stored = self.stored_version(&searcher, id)?;
            if stored.is_some_and(|stored| stored >= *version) {
                continue;
            }
            if stored.is_some() {
                present += 1;
            }
            effective.push(Delete {
                id: id.clone(),
                version: *version,
                absent: stored.is_none(),
            });
        }
        {
            let mut tombstones = self.lock_tombstones()?;
            tombstones.record(&effective)?;
            tombstones.expire(wall_clock_us())?;
        }
        for delete in &effective {
            writer.delete_term(Term::from_field_text(self.fields.id, &delete.id));
        }
        let opstamp = self.commit(&mut writer)?;
        self.reader.reload()?;
        {
            let mut vectors = self.write_vectors()?;
            for delete in &effective {
                vectors.remove(&delete.id)?;
            }
        }
        drop(writer);
        self.save_vectors_now_and_then(opstamp);
        Ok(present)
    }

    /// Removes documents older than a recorded delete: a crash can fall between a delete's
    /// durable tombstone and the index commit that removes the document.
    fn apply_recorded_deletes(&self) -> Result<(), RetrieverError> {
        let deletes: Vec<(String, u64)> = self
            .lock_tombstones()?
            .iter()
            .map(|(id, version)| (id.to_string(), version))
            .collect();
        let searcher = self.reader.searcher();
        let mut pending = Vec::new();
        for (id, version) in deletes {
            if self
                .stored_version(&searcher, &id)?
                .is_some_and(|stored| stored < version)
            {
                pending.push((id, version));
            }
        }
        if !pending.is_empty() {
            warn!(
                documents = pending.len(),
                "removing documents whose delete was recorded before a crash"
            );
            self.apply_deletes(&pending)?;
        }
        Ok(())
    }

    fn lock_tombstones(&self) -> Result<std::sync::MutexGuard<'_, Tombstones>, RetrieverError> {
        self.tombstones
            .lock()
            .map_err(|_| RetrieverError::Internal("tombstone lock poisoned".to_string()))
    }

    /// The stored documents with these ids, in order; unknown ids are left out.
    pub fn fetch(&self, ids: &[String]) -> Result<Vec<StoredDocument>, RetrieverError> {
        let searcher = self.reader.searcher();
        let mut documents = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(document) = self.find_by_id(&searcher, id)? {
                documents.push(self.to_stored(&document));
            }
        }
        Ok(documents)
    }

    /// This shard's statistics for the query's terms.
    pub fn collect_statistics(&self, query: &str) -> Result<CorpusStatistics, RetrieverError> {
        self.collect_statistics_of(&[query])
    }

    /// This shard's statistics for the terms of every query (a main query and its
    /// sub-queries, which one search request carries together).
    pub fn collect_statistics_of(
        &self,
        queries: &[&str],
    ) -> Result<CorpusStatistics, RetrieverError> {
        use tantivy::query::Bm25StatisticsProvider;
        let searcher = self.reader.searcher();
        let mut statistics = CorpusStatistics {
            num_docs: searcher.total_num_docs()?,
            total_num_tokens: searcher.total_num_tokens(self.fields.body)?,
            ..CorpusStatistics::default()
        };
        for query in queries {
            for term in self.query_terms(query)? {
                if statistics.doc_freqs.contains_key(&term) {
                    continue;
                }
                let body_term = Term::from_field_text(self.fields.body, &term);
                statistics
                    .doc_freqs
                    .insert(term, searcher.doc_freq(&body_term)?);
            }
        }
        Ok(statistics)
    }

    /// The top `k` documents by BM25, scored with `global` statistics when given; with a
    /// filter, among the documents it admits (scores and statistics unchanged).
    pub fn search_keyword(
        &self,
        query: &str,
        k: usize,
        global: Option<&CorpusStatistics>,
        filter: Option<&dyn Query>,
    ) -> Result<Vec<ShardCandidate>, RetrieverError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let terms = self.query_terms(query)?;
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let clauses: Vec<(Occur, Box<dyn Query>)> = terms
            .iter()
            .map(|term| {
                let term = Term::from_field_text(self.fields.body, term);
                let query: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                (Occur::Should, query)
            })
            .collect();
        let terms_query: Box<dyn Query> = Box::new(BooleanQuery::new(clauses));
        let query: Box<dyn Query> = match filter {
            None => terms_query,
            Some(filter) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, terms_query),
                (
                    Occur::Must,
                    Box::new(ConstScoreQuery::new(filter.box_clone(), 0.0)),
                ),
            ])),
        };
        let searcher = self.reader.searcher();
        let collector = TopByScoreThenKey {
            limit: k,
            key_field: VECTOR_KEY_FIELD,
        };
        let ranked = match global {
            Some(global) => {
                let provider = GlobalStatisticsProvider {
                    global,
                    local: &searcher,
                    body: self.fields.body,
                };
                searcher.search_with_statistics_provider(query.as_ref(), &collector, &provider)?
            }
            None => searcher.search(query.as_ref(), &collector)?,
        };
        let mut ids = FastIds::default();
        let mut candidates = Vec::with_capacity(ranked.len());
        for hit in ranked {
            candidates.push(ShardCandidate {
                doc_id: ids.id(&searcher, hit.address)?,
                score: f64::from(hit.score),
            });
        }
        Ok(candidates)
    }

    /// Distinct analysed terms of a query, as the body field indexes them.
    fn query_terms(&self, query: &str) -> Result<Vec<String>, RetrieverError> {
        let mut analyzer = self.index.tokenizer_for_field(self.fields.body)?;
        let mut stream = analyzer.token_stream(query);
        let mut seen = HashSet::new();
        let mut terms = Vec::new();
        while stream.advance() {
            let text = stream.token().text.clone();
            if seen.insert(text.clone()) {
                terms.push(text);
            }
            if terms.len() == MAX_QUERY_TERMS {
                break;
            }
        }
        Ok(terms)
    }

    fn find_by_id(
        &self,
        searcher: &Searcher,
        id: &str,
    ) -> Result<Option<TantivyDocument>, RetrieverError> {
        let query = TermQuery::new(
            Term::from_field_text(self.fields.id, id),
            IndexRecordOption::Basic,
        );
        let top = searcher.search(&query, &TopDocs::with_limit(1).order_by_score())?;
        match top.first() {
            Some((_, address)) => Ok(Some(searcher.doc(*address)?)),
            None => Ok(None),
        }
    }

    fn lock_writer(&self) -> Result<std::sync::MutexGuard<'_, IndexWriter>, RetrieverError> {
        self.writer
            .lock()
            .map_err(|_| RetrieverError::Internal("index writer lock poisoned".to_string()))
    }

    fn to_stored(&self, document: &TantivyDocument) -> StoredDocument {
        let text_of = |field| stored_text(document, field);
        let metadata = serde_json::from_str(&text_of(self.fields.metadata)).unwrap_or_default();
        StoredDocument {
            id: text_of(self.fields.id),
            title: text_of(self.fields.title),
            text: text_of(self.fields.text),
            metadata,
            vector: stored_vector(document, self.fields.vector),
            version: stored_u64(document, self.fields.version),
        }
    }
}

/// Calls `visit` with every stored document that is not deleted.
pub(crate) fn for_each_live_document(
    searcher: &Searcher,
    mut visit: impl FnMut(&TantivyDocument) -> Result<(), RetrieverError>,
) -> Result<(), RetrieverError> {
    for (segment_ordinal, segment) in searcher.segment_readers().iter().enumerate() {
        let alive = segment.alive_bitset();
        for doc_id in 0..segment.max_doc() {
            if alive.is_some_and(|bitset| !bitset.is_alive(doc_id)) {
                continue;
            }
            let document: TantivyDocument =
                searcher.doc(DocAddress::new(segment_ordinal as u32, doc_id))?;
            visit(&document)?;
        }
    }
    Ok(())
}

/// Rebuilds the vector index from the vectors tantivy stores, for every live document.
fn rebuild_vectors(
    searcher: &Searcher,
    fields: &ShardFields,
    directory: &Path,
) -> Result<VectorIndex, RetrieverError> {
    let mut vectors = VectorIndex::empty(directory);
    for_each_live_document(searcher, |document| {
        let vector = stored_vector(document, fields.vector);
        if !vector.is_empty() {
            vectors.upsert(&stored_text(document, fields.id), &vector)?;
        }
        Ok(())
    })?;
    info!(
        vectors = vectors.len(),
        "vector index rebuilt from the stored vectors"
    );
    Ok(vectors)
}

fn validate_document(document: &StoredDocument) -> Result<(), RetrieverError> {
    if document.id.trim().is_empty() {
        return Err(RetrieverError::invalid("document.id", "must not be empty"));
    }
    if document.text.trim().is_empty() {
        return Err(RetrieverError::invalid(
            "document.text",
            format!("must not be empty (document {:?})", document.id),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
