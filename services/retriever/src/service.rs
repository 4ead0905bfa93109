//! The tonic `quarry.v1.Retriever` service: decodes requests, finds the collection's index,
//! runs its blocking index work on tokio's blocking pool, and maps errors to gRPC codes.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use quarry_proto::v1::retriever_server::Retriever;
use quarry_proto::v1::{
    CandidateList, CollectStatsRequest, CorpusStats, DocumentVersion, ExportRequest, FetchRequest,
    FetchResponse, ImportPartitionRequest, ImportProgress, IndexRequest, IndexResponse,
    ListVersionsRequest, ShardDeleteRequest, ShardDeleteResponse, ShardInfoRequest,
    ShardInfoResponse, ShardSearchRequest, ShardSearchResponse,
};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::collections::ShardCollections;
use crate::error::RetrieverError;
#[cfg(feature = "fault-injection")]
use crate::fault::InjectedFault;
use crate::filter::compile_optional;
use crate::import::Importer;
use crate::metrics::{metrics, replica_labels};
use crate::partitions::PartitionedIndex;
use crate::shard::{ShardCandidate, StoredDocument};
use crate::statistics::CorpusStatistics;
use crate::wire::{
    candidate_to_proto, statistics_from_proto, statistics_to_proto, stored_from_proto,
    stored_to_proto,
};

/// Documents committed together while an `Index` stream is read.
const INDEX_COMMIT_BATCH: usize = 1000;
/// Most candidates of either kind one shard returns.
const MAX_SHARD_K: u32 = 10_000;
/// Most ids of one `Export` request.
const MAX_EXPORT_IDS: usize = 10_000;
/// Versions or documents per streamed message batch.
const STREAM_CHUNK: usize = 256;
/// Most keyword sub-queries one search carries.
const MAX_SUB_QUERIES: usize = 16;
/// Smallest `Fetch` reply sent compressed (when the caller accepts zstd): below it, a fresh
/// zstd context costs more time than the bytes it saves.
const COMPRESS_MIN_BYTES: usize = 16 * 1024;
/// Most ids of one `Fetch` request.
const MAX_FETCH_IDS: usize = 10_000;
/// The message limit when none is set: tonic's default for decoding.
const DEFAULT_MESSAGE_LIMIT: usize = 4 * 1024 * 1024;
/// Most collections one `Index` stream writes to.
const MAX_INDEX_COLLECTIONS: usize = 64;

type Streamed<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// Serves one shard replica.
#[derive(Clone)]
pub struct RetrieverService {
    collections: Arc<ShardCollections>,
    /// Copies partitions the placement moves here (none: `ImportPartition` is refused).
    importer: Option<Arc<Importer>>,
    /// The largest reply this server may send; a reply that would outgrow it is cut or
    /// refused, never dropped by the transport.
    message_limit: usize,
    #[cfg(feature = "fault-injection")]
    fault: Option<Arc<InjectedFault>>,
}

impl RetrieverService {
    pub fn new(collections: Arc<ShardCollections>) -> Self {
        Self {
            collections,
            importer: None,
            message_limit: DEFAULT_MESSAGE_LIMIT,
            #[cfg(feature = "fault-injection")]
            fault: None,
        }
    }

    /// Takes partitions the placement moves onto this replica.
    pub fn with_importer(mut self, importer: Arc<Importer>) -> Self {
        self.importer = Some(importer);
        self
    }

    /// The largest reply to send, as the server's `max_encoding_message_size`.
    pub fn with_message_limit(mut self, bytes: usize) -> Self {
        self.message_limit = bytes;
        self
    }

    /// Delays a share of searches (tests and benchmarks only).
    #[cfg(feature = "fault-injection")]
    pub fn with_fault(mut self, fault: InjectedFault) -> Self {
        tracing::warn!(
            delay_ms = fault.delay.as_millis() as u64,
            rate = fault.rate,
            "fault injection is on"
        );
        self.fault = Some(Arc::new(fault));
        self
    }

    async fn maybe_delay(&self) {
        #[cfg(feature = "fault-injection")]
        if let Some(fault) = &self.fault {
            if fault.hits() {
                tokio::time::sleep(fault.delay).await;
            }
        }
    }

    /// Runs `work` on collection `collection`'s index on the blocking pool.
    async fn blocking<T, F>(&self, collection: &str, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&PartitionedIndex) -> Result<T, RetrieverError> + Send + 'static,
    {
        let index = self.collections.get(collection).await?;
        tokio::task::spawn_blocking(move || work(&index))
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
        let mut request = request.into_inner();
        check_sub_queries(&request.sub_queries)?;
        let collection = std::mem::take(&mut request.collection);
        let partitions = self
            .collections
            .readable(&request.partitions, request.placement_epoch)
            .await?;
        let statistics = self
            .blocking(&collection, move |index| {
                index
                    .select(&partitions)
                    .collect_statistics_of(&query_texts(&request.query, &request.sub_queries))
            })
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
        check_sub_queries(&request.sub_queries)?;
        if request.sub_query_k > MAX_SHARD_K {
            return Err(RetrieverError::invalid(
                "sub_query_k",
                format!("must be at most {MAX_SHARD_K}"),
            )
            .into());
        }
        let span = tracing::Span::current();
        span.record("keyword_k", request.keyword_k);
        span.record("vector_k", request.vector_k);
        let global = request.global_stats.as_ref().map(statistics_from_proto);
        let expected = request
            .expected_local_stats
            .as_ref()
            .map(statistics_from_proto);
        let (keyword_k, vector_k) = (request.keyword_k as usize, request.vector_k as usize);
        let sub_query_k = request.sub_query_k as usize;
        let collection = request.collection.clone();
        let partitions = self
            .collections
            .readable(&request.partitions, request.placement_epoch)
            .await?;
        let outcome = self
            .blocking(&collection, move |index| {
                let shard = index.select(&partitions);
                let filter =
                    compile_optional(request.filter.as_ref(), crate::schema::meta_field())?;
                let filter = filter.as_deref();
                let queries = query_texts(&request.query, &request.sub_queries);
                if let Some(expected) = expected {
                    let local = shard.collect_statistics_of(&queries)?;
                    if local != expected {
                        return Ok(SearchOutcome::Stale(local));
                    }
                }
                let wants_keywords = keyword_k > 0 || !request.sub_queries.is_empty();
                let global = match wants_keywords {
                    true => shard.scoring_statistics(global, &queries)?,
                    false => None,
                };
                let keyword =
                    shard.search_keyword(&request.query, keyword_k, global.as_ref(), filter)?;
                let vector = if vector_k > 0 {
                    shard.search_vector(&request.query_vector, vector_k, filter)?
                } else {
                    Vec::new()
                };
                let mut sub_queries = Vec::with_capacity(request.sub_queries.len());
                for sub_query in &request.sub_queries {
                    sub_queries.push(shard.search_keyword(
                        sub_query,
                        sub_query_k,
                        global.as_ref(),
                        filter,
                    )?);
                }
                Ok(SearchOutcome::Ranked {
                    keyword,
                    vector,
                    sub_queries,
                })
            })
            .await?;
        let response = match outcome {
            SearchOutcome::Stale(local) => {
                span.record("stale", true);
                debug!(
                    shard = self.collections.shard(),
                    "statistics changed; answered stale"
                );
                ShardSearchResponse {
                    shard: self.collections.shard(),
                    stale: true,
                    local_stats: Some(statistics_to_proto(&local)),
                    ..ShardSearchResponse::default()
                }
            }
            SearchOutcome::Ranked {
                keyword,
                vector,
                sub_queries,
            } => {
                span.record("keyword_hits", keyword.len());
                span.record("vector_hits", vector.len());
                ShardSearchResponse {
                    shard: self.collections.shard(),
                    keyword: keyword.into_iter().map(candidate_to_proto).collect(),
                    vector: vector.into_iter().map(candidate_to_proto).collect(),
                    sub_queries: sub_queries
                        .into_iter()
                        .map(|candidates| CandidateList {
                            candidates: candidates.into_iter().map(candidate_to_proto).collect(),
                        })
                        .collect(),
                    stale: false,
                    local_stats: None,
                }
            }
        };
        let bytes = response.encoded_len();
        if bytes > self.message_limit {
            return Err(RetrieverError::TooLarge(format!(
                "keyword_k, vector_k, sub_query_k: the reply would be {bytes} bytes, over the \
                 message limit of {}",
                self.message_limit
            ))
            .into());
        }
        Ok(Response::new(response))
    }

    async fn index(
        &self,
        request: Request<Streaming<IndexRequest>>,
    ) -> Result<Response<IndexResponse>, Status> {
        let mut stream = request.into_inner();
        // A stream may mix collections: each has its own batch, committed on its own index.
        let mut batches: HashMap<String, Vec<StoredDocument>> = HashMap::new();
        let mut indexed = 0;
        let mut bytes = 0;
        let mut epoch = None;
        while let Some(message) = stream.next().await {
            let message = message?;
            if epoch.is_none() {
                // Routed at an epoch this replica has not seen: wait for its watch first.
                self.collections
                    .placement_at_least(message.placement_epoch)
                    .await;
                epoch = Some(message.placement_epoch);
            }
            let epoch = epoch.unwrap_or_default();
            let mut document = message
                .document
                .ok_or_else(|| Status::invalid_argument("document: missing"))?;
            bytes += (document.id.len() + document.title.len() + document.text.len()) as u64;
            let collection = std::mem::take(&mut document.collection);
            let stored = stored_from_proto(document, message.vector, message.version)?;
            let batch = batches.entry(collection.clone()).or_default();
            batch.push(stored);
            if batch.len() == INDEX_COMMIT_BATCH {
                let full = std::mem::take(batch);
                let fence = self.collections.write_fence(epoch);
                indexed += self
                    .blocking(&collection, move |index| index.upsert(full, &fence))
                    .await?;
            }
            if batches.len() > MAX_INDEX_COLLECTIONS {
                return Err(RetrieverError::invalid(
                    "document.collection",
                    format!("at most {MAX_INDEX_COLLECTIONS} collections in one stream"),
                )
                .into());
            }
        }
        for (collection, batch) in batches {
            if !batch.is_empty() {
                let fence = self.collections.write_fence(epoch.unwrap_or_default());
                indexed += self
                    .blocking(&collection, move |index| index.upsert(batch, &fence))
                    .await?;
            }
        }
        let labels = replica_labels(self.collections.shard(), self.collections.replica());
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
        self.collections
            .placement_at_least(request.placement_epoch)
            .await;
        let version = match request.version {
            0 => self.collections.next_version(),
            version => version,
        };
        let deletes = request.ids.into_iter().map(|id| (id, version)).collect();
        let fence = self.collections.write_fence(request.placement_epoch);
        let deleted = self
            .blocking(&request.collection, move |index| {
                index.apply_deletes(deletes, &fence)
            })
            .await?;
        Ok(Response::new(ShardDeleteResponse { deleted }))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let FetchRequest {
            ids,
            collection,
            placement_epoch,
        } = request.into_inner();
        if ids.len() > MAX_FETCH_IDS {
            return Err(RetrieverError::invalid(
                "ids",
                format!("at most {MAX_FETCH_IDS} per request"),
            )
            .into());
        }
        if placement_epoch > 0 {
            // Every id's partition must still be served here, or a hit would go missing.
            let placement = self.collections.placement_at_least(placement_epoch).await;
            let mut partitions: Vec<u32> =
                ids.iter().map(|id| placement.partition_of(id)).collect();
            partitions.sort_unstable();
            partitions.dedup();
            self.collections
                .readable(&partitions, placement_epoch)
                .await?;
        }
        let limit = self.message_limit;
        let reply = self
            .blocking(&collection, move |shard| {
                let mut reply = FetchResponse::default();
                // Documents are loaded one at a time, so a reply that would outgrow the
                // message limit stops early and says how many ids it left for another call.
                for (position, id) in ids.iter().enumerate() {
                    let Some(document) = shard.fetch(std::slice::from_ref(id))?.pop() else {
                        continue;
                    };
                    let document = stored_to_proto(document);
                    // The document, its field tag and length, and room for `ids_left`.
                    let added = document.encoded_len() + 16;
                    if !reply.documents.is_empty() && reply.encoded_len() + added > limit {
                        reply.ids_left = (ids.len() - position) as u32;
                        break;
                    }
                    reply.documents.push(document);
                }
                Ok(reply)
            })
            .await?;
        if reply.encoded_len() > self.message_limit {
            return Err(RetrieverError::TooLarge(format!(
                "ids: document {:?} alone is larger than the message limit of {}",
                reply.documents.first().map(|document| document.id.as_str()),
                self.message_limit
            ))
            .into());
        }
        let compress = reply.encoded_len() >= COMPRESS_MIN_BYTES;
        let mut response = Response::new(reply);
        if !compress {
            response.disable_compression();
        }
        Ok(response)
    }

    async fn shard_info(
        &self,
        request: Request<ShardInfoRequest>,
    ) -> Result<Response<ShardInfoResponse>, Status> {
        // Counts cover the partitions this shard serves (not those it imports or drains).
        let served = self
            .collections
            .placement()
            .owned_by(self.collections.shard());
        let info = self
            .blocking(&request.into_inner().collection, move |index| {
                let selection = index.select(&served);
                Ok(ShardInfoResponse {
                    shard: index.shard(),
                    replica: index.replica(),
                    num_docs: selection.num_docs(),
                    data_dir: index.directory().display().to_string(),
                    num_vectors: selection.num_vectors(),
                    partitions: index.held(),
                })
            })
            .await?;
        Ok(Response::new(info))
    }

    type ListVersionsStream = Streamed<DocumentVersion>;

    async fn list_versions(
        &self,
        request: Request<ListVersionsRequest>,
    ) -> Result<Response<Self::ListVersionsStream>, Status> {
        let request = request.into_inner();
        if request.min_epoch > 0 {
            self.collections.placement_at_least(request.min_epoch).await;
        }
        let versions = self
            .blocking(&request.collection, move |index| match request.partition {
                None => index.select_all().versions(),
                // Taken after every write holding the partition has committed: a write
                // routed before the epoch waited for is either in the list or refused.
                Some(partition) => match index.get(partition) {
                    Some(part) => part.versions_settled(),
                    None => Ok(Vec::new()),
                },
            })
            .await?;
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

    type ImportPartitionStream = Streamed<ImportProgress>;

    async fn import_partition(
        &self,
        request: Request<ImportPartitionRequest>,
    ) -> Result<Response<Self::ImportPartitionStream>, Status> {
        let Some(importer) = self.importer.clone() else {
            return Err(Status::failed_precondition(
                "this retriever takes no partition imports (no discovery)",
            ));
        };
        let updates = importer.start(request.into_inner());
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(updates),
        )))
    }

    type ExportStream = Streamed<IndexRequest>;

    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let ExportRequest {
            ids,
            collection,
            partition: _,
        } = request.into_inner();
        if ids.len() > MAX_EXPORT_IDS {
            return Err(RetrieverError::invalid(
                "ids",
                format!("at most {MAX_EXPORT_IDS} per request"),
            )
            .into());
        }
        let shard = self.collections.get(&collection).await?;
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
                    let mut exported = stored_to_proto(document);
                    exported.collection = collection.clone();
                    let message = IndexRequest {
                        document: Some(exported),
                        vector,
                        version,
                        placement_epoch: 0,
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

/// What one shard search found, or that the gateway's statistics of this shard are stale.
enum SearchOutcome {
    Stale(CorpusStatistics),
    Ranked {
        keyword: Vec<ShardCandidate>,
        vector: Vec<ShardCandidate>,
        sub_queries: Vec<Vec<ShardCandidate>>,
    },
}

/// The main query and its sub-queries, whose terms one statistics answer covers.
fn query_texts<'a>(query: &'a str, sub_queries: &'a [String]) -> Vec<&'a str> {
    std::iter::once(query)
        .chain(sub_queries.iter().map(String::as_str))
        .collect()
}

fn check_sub_queries(sub_queries: &[String]) -> Result<(), RetrieverError> {
    if sub_queries.len() > MAX_SUB_QUERIES {
        return Err(RetrieverError::invalid(
            "sub_queries",
            format!("at most {MAX_SUB_QUERIES}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_over(documents: &[(&str, &str)], message_limit: usize) -> RetrieverService {
        let directory = tempfile::tempdir().unwrap().keep();
        let collections = ShardCollections::open(
            &directory,
            0,
            0,
            20_000_000,
            quarry_kit::collections::CollectionCatalog::watch(
                &quarry_kit::collections::LocalCatalog::fixed(),
            ),
            crate::collections::one_partition(),
        )
        .unwrap();
        let shard = collections.default_collection().get_or_create(0).unwrap();
        let stored: Vec<StoredDocument> = documents
            .iter()
            .map(|(id, text)| StoredDocument {
                id: id.to_string(),
                title: String::new(),
                text: text.to_string(),
                ..StoredDocument::default()
            })
            .collect();
        shard.upsert(&stored).unwrap();
        RetrieverService::new(Arc::new(collections)).with_message_limit(message_limit)
    }

    #[tokio::test]
    async fn a_search_with_outdated_expected_statistics_answers_stale_without_searching() {
        let service = service_over(
            &[("a", "comets are icy"), ("b", "comets have tails")],
            1 << 20,
        );
        let request = |expected: Option<CorpusStats>| ShardSearchRequest {
            query: "comets".to_string(),
            keyword_k: 10,
            expected_local_stats: expected,
            ..ShardSearchRequest::default()
        };
        let current = Retriever::collect_stats(
            &service,
            Request::new(CollectStatsRequest {
                query: "comets".to_string(),
                ..CollectStatsRequest::default()
            }),
        )
        .await
        .unwrap()
        .into_inner();
        let fresh = Retriever::search(&service, Request::new(request(Some(current.clone()))))
            .await
            .unwrap()
            .into_inner();
        assert!(!fresh.stale);
        assert_eq!(fresh.keyword.len(), 2);
        let outdated = CorpusStats {
            num_docs: current.num_docs - 1,
            ..current.clone()
        };
        let stale = Retriever::search(&service, Request::new(request(Some(outdated))))
            .await
            .unwrap()
            .into_inner();
        assert!(stale.stale);
        assert!(stale.keyword.is_empty());
        assert_eq!(stale.local_stats, Some(current));
    }

    #[tokio::test]
    async fn sub_queries_are_answered_in_the_same_search() {
        let service = service_over(
            &[
                ("a", "comets are icy"),
                ("b", "planets are round"),
                ("c", "moons orbit planets"),
            ],
            1 << 20,
        );
        let response = Retriever::search(
            &service,
            Request::new(ShardSearchRequest {
                query: "comets".to_string(),
                keyword_k: 5,
                sub_queries: vec!["planets".to_string(), "moons".to_string()],
                sub_query_k: 5,
                ..ShardSearchRequest::default()
            }),
        )
        .await
        .unwrap()
        .into_inner();
        let ids = |list: &[quarry_proto::v1::Candidate]| -> Vec<String> {
            let mut ids: Vec<String> = list.iter().map(|hit| hit.doc_id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&response.keyword), ["a"]);
        assert_eq!(response.sub_queries.len(), 2);
        assert_eq!(ids(&response.sub_queries[0].candidates), ["b", "c"]);
        assert_eq!(ids(&response.sub_queries[1].candidates), ["c"]);
    }

    #[tokio::test]
    async fn a_fetch_stops_at_the_message_limit_and_names_the_ids_left() {
        let long = "word ".repeat(200);
        let service = service_over(&[("a", &long), ("b", &long), ("c", &long)], 2_500);
        let response = Retriever::fetch(
            &service,
            Request::new(FetchRequest {
                ids: vec!["a".to_string(), "b".to_string(), "c".to_string()],
                ..FetchRequest::default()
            }),
        )
        .await
        .unwrap()
        .into_inner();
        assert_eq!(response.documents.len(), 2);
        assert_eq!(response.ids_left, 1);
        assert!(response.encoded_len() <= 2_500);

        let tiny = service_over(&[("a", &long)], 100);
        let error = Retriever::fetch(
            &tiny,
            Request::new(FetchRequest {
                ids: vec!["a".to_string()],
                ..FetchRequest::default()
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);
        let search = Retriever::search(
            &tiny,
            Request::new(ShardSearchRequest {
                query: "word".to_string(),
                keyword_k: 10,
                ..ShardSearchRequest::default()
            }),
        )
        .await;
        assert!(search.is_ok(), "one id fits: {search:?}");
    }
}
