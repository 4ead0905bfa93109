//! The tonic `quarry.v1.Retriever` service: decodes requests, runs the shard's blocking
//! index work on tokio's blocking pool, and maps errors to gRPC codes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quarry_proto::v1::retriever_server::Retriever;
use quarry_proto::v1::{
    Candidate, CollectStatsRequest, CorpusStats, Document, DocumentVersion, ExportRequest,
    FetchRequest, FetchResponse, IndexRequest, IndexResponse, ListVersionsRequest,
    ShardDeleteRequest, ShardDeleteResponse, ShardInfoRequest, ShardInfoResponse,
    ShardSearchRequest, ShardSearchResponse, TermStats,
};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::RetrieverError;
use crate::metrics::{metrics, replica_labels};
use crate::shard::{Shard, ShardCandidate, StoredDocument};
use crate::statistics::CorpusStatistics;

/// Documents committed together while an `Index` stream is read.
const INDEX_COMMIT_BATCH: usize = 1000;
/// Most candidates of either kind one shard returns.
const MAX_SHARD_K: u32 = 10_000;
/// Most ids of one `Export` request.
const MAX_EXPORT_IDS: usize = 10_000;
/// Versions or documents per streamed message batch.
const STREAM_CHUNK: usize = 256;

type Streamed<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// Serves one shard replica.
#[derive(Clone)]
pub struct RetrieverService {
    shard: Arc<Shard>,
    fault: Option<Arc<InjectedFault>>,
}

/// A delay added to a share of searches, for tests and benchmarks of tail latency.
pub struct InjectedFault {
    pub delay: Duration,
    pub rate: f64,
    calls: AtomicU64,
}

impl InjectedFault {
    pub fn new(delay: Duration, rate: f64) -> Self {
        Self {
            delay,
            rate: rate.clamp(0.0, 1.0),
            calls: AtomicU64::new(0),
        }
    }

    /// Whether this call is delayed: a hash of the call's number, so the share is exact
    /// over many calls and the same in every run.
    fn hits(&self) -> bool {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let draw = xxh3_64(&call.to_le_bytes()) as f64 / u64::MAX as f64;
        draw < self.rate
    }
}

impl RetrieverService {
    pub fn new(shard: Arc<Shard>) -> Self {
        Self { shard, fault: None }
    }

    /// Delays a share of searches (tests and benchmarks only).
    pub fn with_fault(mut self, fault: InjectedFault) -> Self {
        warn!(
            delay_ms = fault.delay.as_millis() as u64,
            rate = fault.rate,
            "fault injection is on"
        );
        self.fault = Some(Arc::new(fault));
        self
    }

    async fn maybe_delay(&self) {
        if let Some(fault) = &self.fault {
            if fault.hits() {
                tokio::time::sleep(fault.delay).await;
            }
        }
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Shard) -> Result<T, RetrieverError> + Send + 'static,
    {
        let shard = Arc::clone(&self.shard);
        tokio::task::spawn_blocking(move || work(&shard))
            .await
            .map_err(|error| Status::internal(format!("shard task failed: {error}")))?
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl Retriever for RetrieverService {
    async fn collect_stats(
        &self,
        request: Request<CollectStatsRequest>,
    ) -> Result<Response<CorpusStats>, Status> {
        self.maybe_delay().await;
        let query = request.into_inner().query;
        let statistics = self
            .blocking(move |shard| shard.collect_statistics(&query))
            .await?;
        Ok(Response::new(statistics_to_proto(&statistics)))
    }

    async fn search(
        &self,
        request: Request<ShardSearchRequest>,
    ) -> Result<Response<ShardSearchResponse>, Status> {
        self.maybe_delay().await;
        let request = request.into_inner();
        if request.keyword_k > MAX_SHARD_K {
            return Err(RetrieverError::invalid(
                "keyword_k",
                format!("must be at most {MAX_SHARD_K}"),
            )
            .into());
        }
        if request.vector_k > MAX_SHARD_K {
            return Err(RetrieverError::invalid(
                "vector_k",
                format!("must be at most {MAX_SHARD_K}"),
            )
            .into());
        }
        if request.vector_k > 0 && request.query_vector.is_empty() {
            return Err(
                RetrieverError::invalid("query_vector", "is required when vector_k > 0").into(),
            );
        }
        let span = tracing::Span::current();
        span.record("keyword_k", request.keyword_k);
        span.record("vector_k", request.vector_k);
        let global = request.global_stats.as_ref().map(statistics_from_proto);
        let query = request.query;
        let query_vector = request.query_vector;
        let keyword_k = request.keyword_k as usize;
        let vector_k = request.vector_k as usize;
        let (keyword, vector) = self
            .blocking(move |shard| {
                let keyword = shard.search_keyword(&query, keyword_k, global.as_ref())?;
                let vector = if vector_k > 0 {
                    shard.search_vector(&query_vector, vector_k)?
                } else {
                    Vec::new()
                };
                Ok((keyword, vector))
            })
            .await?;
        span.record("keyword_hits", keyword.len());
        span.record("vector_hits", vector.len());
        debug!(
            shard = self.shard.shard(),
            keyword = keyword.len(),
            vector = vector.len(),
            "shard searched"
        );
        Ok(Response::new(ShardSearchResponse {
            shard: self.shard.shard(),
            keyword: keyword.into_iter().map(candidate_to_proto).collect(),
            vector: vector.into_iter().map(candidate_to_proto).collect(),
        }))
    }

    async fn index(
        &self,
        request: Request<Streaming<IndexRequest>>,
    ) -> Result<Response<IndexResponse>, Status> {
        let mut stream = request.into_inner();
        let mut batch = Vec::with_capacity(INDEX_COMMIT_BATCH);
        let mut indexed = 0;
        let mut bytes = 0;
        while let Some(message) = stream.next().await {
            let message = message?;
            let document = message
                .document
                .ok_or_else(|| Status::invalid_argument("document: missing"))?;
            bytes += (document.id.len() + document.title.len() + document.text.len()) as u64;
            batch.push(stored_from_proto(document, message.vector, message.version));
            if batch.len() == INDEX_COMMIT_BATCH {
                let full = std::mem::take(&mut batch);
                indexed += self.blocking(move |shard| shard.upsert(&full)).await?;
            }
        }
        if !batch.is_empty() {
            indexed += self.blocking(move |shard| shard.upsert(&batch)).await?;
        }
        let labels = replica_labels(self.shard.shard(), self.shard.replica());
        let labels = [labels[0].as_str(), labels[1].as_str()];
        let retriever_metrics = metrics();
        retriever_metrics
            .ingest_documents
            .with_label_values(&labels)
            .inc_by(indexed);
        retriever_metrics
            .ingest_bytes
            .with_label_values(&labels)
            .inc_by(bytes);
        Ok(Response::new(IndexResponse { indexed }))
    }

    async fn delete(
        &self,
        request: Request<ShardDeleteRequest>,
    ) -> Result<Response<ShardDeleteResponse>, Status> {
        let request = request.into_inner();
        let (ids, version) = (request.ids, request.version);
        let deleted = self
            .blocking(move |shard| shard.delete(&ids, version))
            .await?;
        Ok(Response::new(ShardDeleteResponse { deleted }))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let ids = request.into_inner().ids;
        let documents = self.blocking(move |shard| shard.fetch(&ids)).await?;
        Ok(Response::new(FetchResponse {
            documents: documents.into_iter().map(stored_to_proto).collect(),
        }))
    }

    async fn shard_info(
        &self,
        _request: Request<ShardInfoRequest>,
    ) -> Result<Response<ShardInfoResponse>, Status> {
        let info = self
            .blocking(|shard| {
                Ok(ShardInfoResponse {
                    shard: shard.shard(),
                    replica: shard.replica(),
                    num_docs: shard.num_docs(),
                    data_dir: shard.data_dir().display().to_string(),
                    num_vectors: shard.num_vectors(),
                })
            })
            .await?;
        Ok(Response::new(info))
    }

    type ListVersionsStream = Streamed<DocumentVersion>;

    async fn list_versions(
        &self,
        _request: Request<ListVersionsRequest>,
    ) -> Result<Response<Self::ListVersionsStream>, Status> {
        let versions = self.blocking(|shard| shard.versions()).await?;
        let messages: Vec<Result<DocumentVersion, Status>> = versions
            .into_iter()
            .map(|version| {
                Ok(DocumentVersion {
                    id: version.id,
                    version: version.version,
                    deleted: version.deleted,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    type ExportStream = Streamed<IndexRequest>;

    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let ids = request.into_inner().ids;
        if ids.len() > MAX_EXPORT_IDS {
            return Err(RetrieverError::invalid(
                "ids",
                format!("at most {MAX_EXPORT_IDS} per request"),
            )
            .into());
        }
        let shard = Arc::clone(&self.shard);
        let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_CHUNK);
        tokio::spawn(async move {
            for chunk in ids.chunks(STREAM_CHUNK) {
                let (shard, chunk) = (Arc::clone(&shard), chunk.to_vec());
                let fetched = tokio::task::spawn_blocking(move || shard.fetch(&chunk))
                    .await
                    .map_err(|error| Status::internal(format!("shard task failed: {error}")))
                    .and_then(|fetched| fetched.map_err(Status::from));
                let documents = match fetched {
                    Ok(documents) => documents,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                for document in documents {
                    let (vector, version) = (document.vector.clone(), document.version);
                    let message = IndexRequest {
                        document: Some(stored_to_proto(document)),
                        vector,
                        version,
                    };
                    if sender.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        Ok(Response::new(Box::pin(stream)))
    }
}

fn statistics_to_proto(statistics: &CorpusStatistics) -> CorpusStats {
    let mut terms: Vec<TermStats> = statistics
        .doc_freqs
        .iter()
        .map(|(term, doc_freq)| TermStats {
            term: term.clone(),
            doc_freq: *doc_freq,
        })
        .collect();
    terms.sort_by(|left, right| left.term.cmp(&right.term));
    CorpusStats {
        num_docs: statistics.num_docs,
        total_num_tokens: statistics.total_num_tokens,
        terms,
    }
}

fn statistics_from_proto(stats: &CorpusStats) -> CorpusStatistics {
    CorpusStatistics {
        num_docs: stats.num_docs,
        total_num_tokens: stats.total_num_tokens,
        doc_freqs: stats
            .terms
            .iter()
            .map(|term| (term.term.clone(), term.doc_freq))
            .collect(),
    }
}

fn candidate_to_proto(candidate: ShardCandidate) -> Candidate {
    Candidate {
        doc_id: candidate.doc_id,
        title: candidate.title,
        text: candidate.text,
        score: candidate.score,
    }
}

pub(crate) fn stored_from_proto(
    document: Document,
    vector: Vec<f32>,
    version: u64,
) -> StoredDocument {
    StoredDocument {
        version,
        id: document.id,
        title: document.title,
        text: document.text,
        metadata: document.metadata.into_iter().collect::<BTreeMap<_, _>>(),
        vector,
    }
}

pub(crate) fn stored_to_proto(document: StoredDocument) -> Document {
    Document {
        id: document.id,
        title: document.title,
        text: document.text,
        metadata: document.metadata.into_iter().collect(),
    }
}
