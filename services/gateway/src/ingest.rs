//! `Ingest`, bulk style: each document is validated on its own, routed to its shard by jump
//! consistent hash of its id, buffered per shard, embedded by the analyzer (when it has an
//! encoder), and written to every replica of the shard that takes writes (the ready ones and
//! any catching up); a document counts as accepted only once each of them acknowledged it
//! as durable. Each document is stamped with a version as it arrives, so a later write of
//! the same id wins on every replica whatever order the copies land in.

use std::collections::{BTreeMap, HashMap};

use quarry_kit::collections::{FieldKinds, MAX_FIELDS};

use futures::future::join_all;
use futures::stream::FuturesUnordered;
use futures::Stream;
use quarry_kit::metrics::code_name;
use quarry_proto::v1::{Document, IndexRequest, IngestError, IngestSummary};
use tokio_stream::StreamExt;
use tonic::{Code, Status};
use tracing::field::Empty;
use tracing::{info, warn};

use crate::error::GatewayError;
use crate::front::CollectionGrant;
use crate::gateway::Gateway;
use crate::metrics::metrics;
use crate::validate::validate_document;

/// Tries of one batch's documents with a newer placement after a shard moved past the last.
const MAX_PLACEMENT_TRIES: u32 = 5;
/// Most rejected documents named in one summary; the count covers the rest.
const MAX_REPORTED_ERRORS: usize = 1000;

/// A document waiting for its shard, with its position in the client's stream.
struct Pending {
    index: u64,
    document: Document,
    version: u64,
    /// The kinds of its metadata fields (read once, by `validate_document`).
    fields: BTreeMap<String, FieldKinds>,
}

/// The text a document is embedded from, as BM25 indexes it: title, a space, text.
fn embedding_text(document: &Document) -> String {
    format!("{} {}", document.title, document.text)
}

/// The running totals of one ingest stream.
#[derive(Default)]
struct Tally {
    summary: IngestSummary,
}

impl Tally {
    /// Adds one batch's outcome.
    fn merge(&mut self, other: Tally) {
        self.summary.accepted += other.summary.accepted;
        self.summary.rejected += other.summary.rejected;
        for error in other.summary.errors {
            if self.summary.errors.len() < MAX_REPORTED_ERRORS {
                self.summary.errors.push(error);
            }
        }
    }

    fn reject(&mut self, index: u64, id: &str, code: Code, field: &str, message: String) {
        self.summary.rejected += 1;
        if self.summary.errors.len() < MAX_REPORTED_ERRORS {
            self.summary.errors.push(IngestError {
                index,
                id: id.to_string(),
                code: code_name(code).to_string(),
                field: field.to_string(),
                message,
            });
        }
    }
}

impl Gateway {
    #[tracing::instrument(name = "ingest", skip_all, fields(accepted = Empty, rejected = Empty))]
    pub async fn ingest<S>(
        &self,
        mut documents: S,
        grant: Option<&CollectionGrant>,
    ) -> Result<IngestSummary, GatewayError>
    where
        S: Stream<Item = Result<Document, Status>> + Unpin,
    {
        let placement = self.placement_snapshot();
        // One buffer per collection and shard (a stream may mix collections).
        let mut buffers: HashMap<(String, u32), Vec<Pending>> = HashMap::new();
        let mut tally = Tally::default();
        let mut index = 0u64;
        // Full batches being embedded and written while the stream is read on: the next
        // batch is embedded while the last one commits on its shard.
        let pipeline = self.config.ingest_pipeline.max(1);
        let idle = std::time::Duration::from_millis(self.config.ingest_idle_ms.max(1));
        let mut in_flight = FuturesUnordered::new();
        // A broken stream ends the call with its error, but only after the batches already
        // sent on have finished on every replica (cancelling one could leave replicas apart).
        let mut failure = None;
        loop {
            let message = tokio::select! {
                Some(batch_tally) = in_flight.next(), if !in_flight.is_empty() => {
                    tally.merge(batch_tally);
                    continue;
                }
                message = tokio::time::timeout(idle, documents.next()), if in_flight.len() < pipeline => message,
            };
            let Ok(message) = message else {
                failure = Some(GatewayError::DeadlineExceeded(format!(
                    "ingest stream idle: no document for {} ms (gateway.ingest_idle_ms)",
                    idle.as_millis()
                )));
                break;
            };
            let Some(message) = message else {
                break;
            };
            let document = match message {
                Ok(document) => document,
                Err(status) => {
                    failure = Some(GatewayError::downstream("client", status));
                    break;
                }
            };
            let bytes = document.id.len() + document.title.len() + document.text.len();
            metrics().ingest_bytes.inc_by(bytes as u64);
            let checked = validate_document(&document, &self.config)
                .and_then(|fields| Ok((self.collection_of(&document.collection, grant)?, fields)));
            match checked {
                Err(GatewayError::InvalidArgument { field, reason }) => {
                    tally.reject(
                        index,
                        &document.id,
                        Code::InvalidArgument,
                        field,
                        format!("document {index}: {field}: {reason}"),
                    );
                }
                Err(
                    error @ (GatewayError::Catalog(_)
                    | GatewayError::NotFound(_)
                    | GatewayError::PermissionDenied(_)),
                ) => {
                    tally.reject(
                        index,
                        &document.id,
                        error.code(),
                        "collection",
                        format!("document {index}: {error}"),
                    );
                }
                Err(other) => {
                    failure = Some(other);
                    break;
                }
                Ok((collection, fields)) => {
                    // Buffered by the partition's owner now; routed again when written.
                    let partition = placement.partition_of(&document.id);
                    let shard = placement.owner(partition).unwrap_or_default();
                    let version = self.versions.next();
                    let buffer = buffers.entry((collection.clone(), shard)).or_default();
                    buffer.push(Pending {
                        index,
                        document,
                        version,
                        fields,
                    });
                    if buffer.len() >= self.config.ingest_batch {
                        let batch = std::mem::take(buffer);
                        in_flight.push(self.write_batch(collection, shard, batch));
                    }
                }
            }
            index += 1;
        }
        if failure.is_none() {
            for ((collection, shard), batch) in buffers {
                if !batch.is_empty() {
                    in_flight.push(self.write_batch(collection, shard, batch));
                }
            }
        }
        while let Some(batch_tally) = in_flight.next().await {
            tally.merge(batch_tally);
        }
        if let Some(error) = failure {
            return Err(error);
        }
        tally.summary.errors.sort_by_key(|error| error.index);
        let span = tracing::Span::current();
        span.record("accepted", tally.summary.accepted);
        span.record("rejected", tally.summary.rejected);
        let documents = &metrics().ingest_documents;
        documents
            .with_label_values(&["accepted"])
            .inc_by(tally.summary.accepted);
        documents
            .with_label_values(&["rejected"])
            .inc_by(tally.summary.rejected);
        info!(
            accepted = tally.summary.accepted,
            rejected = tally.summary.rejected,
            "ingest finished"
        );
        Ok(tally.summary)
    }

    /// Embeddings of a batch, `embed_batch` texts per call and `embed_concurrency` calls in
    /// flight, in order; `None` without an encoder.
    async fn embed_batch(&self, batch: &[Pending]) -> Result<Option<Vec<Vec<f32>>>, GatewayError> {
        let limit = std::time::Duration::from_millis(self.config.embed_timeout_ms);
        let chunks: Vec<Vec<String>> = batch
            .chunks(self.config.embed_batch)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|pending| embedding_text(&pending.document))
                    .collect()
            })
            .collect();
        let calls = chunks
            .into_iter()
            .map(|texts| self.embed_texts(texts, true, limit));
        let mut calls = futures::StreamExt::buffered(
            futures::stream::iter(calls),
            self.config.embed_concurrency,
        );
        let mut vectors = Vec::with_capacity(batch.len());
        while let Some(chunk_vectors) = futures::StreamExt::next(&mut calls).await {
            match chunk_vectors? {
                Some(chunk_vectors) => vectors.extend(chunk_vectors),
                None => return Ok(None),
            }
        }
        Ok(Some(vectors))
    }

    /// Embeds one batch and writes it to every replica of its shard that takes writes;
    /// accepted only if all of them acknowledged.
    #[tracing::instrument(name = "write_batch", skip_all, fields(shard, documents = batch.len()))]
    async fn write_batch(&self, collection: String, shard: u32, batch: Vec<Pending>) -> Tally {
        let mut fields: BTreeMap<String, FieldKinds> = BTreeMap::new();
        for (path, kinds) in batch.iter().flat_map(|pending| &pending.fields) {
            if fields.len() < MAX_FIELDS || fields.contains_key(path) {
                let entry = fields.entry(path.clone()).or_default();
                *entry = entry.with(*kinds);
            }
        }
        let mut tally = Tally::default();
        self.write_batch_into(&collection, shard, batch, &mut tally)
            .await;
        // Whatever landed (on some replicas, even) retires the collection's cached answers.
        if tally.summary.accepted > 0 || tally.summary.rejected > 0 {
            self.record_write(&collection).await;
        }
        if tally.summary.accepted > 0 {
            self.record_fields(&collection, &fields).await;
        }
        tally
    }

    /// Records the kinds of the metadata fields a batch wrote, for checking filters. A
    /// catalog that cannot be reached is logged: filters on new fields go unchecked.
    async fn record_fields(&self, collection: &str, fields: &BTreeMap<String, FieldKinds>) {
        if fields.is_empty() {
            return;
        }
        if let Err(error) = self.catalog.record_fields(collection, fields).await {
            warn!(collection, error = %error, "could not record metadata fields' kinds");
        }
    }

    async fn write_batch_into(
        &self,
        collection: &str,
        shard: u32,
        batch: Vec<Pending>,
        tally: &mut Tally,
    ) {
        let vectors = match self.embed_batch(&batch).await {
            Ok(vectors) => vectors,
            Err(error) => {
                warn!(shard, documents = batch.len(), error = %error, "embedding a batch failed");
                for pending in &batch {
                    tally.reject(
                        pending.index,
                        &pending.document.id,
                        error.code(),
                        "text",
                        format!("embedding failed: {error}"),
                    );
                }
                return;
            }
        };
        // Routed by one placement snapshot per try: each document to its partition's
        // writers (the owner, and a shard importing it). A shard that moved past the
        // snapshot refuses; those documents go again under a newer placement.
        let mut waiting: Vec<usize> = (0..batch.len()).collect();
        let mut placement = self.placement_snapshot();
        for attempt in 1..=MAX_PLACEMENT_TRIES {
            let mut per_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for position in &waiting {
                let partition = placement.partition_of(&batch[*position].document.id);
                for writer in placement.writers(partition) {
                    per_shard.entry(writer).or_default().push(*position);
                }
            }
            let writes = per_shard.iter().map(|(writer, positions)| {
                self.write_to_shard(
                    collection,
                    *writer,
                    positions,
                    &batch,
                    vectors.as_deref(),
                    placement.epoch,
                )
            });
            let outcomes = join_all(writes).await;
            // A document is written once every shard it went to took it.
            // Per document: the first failure's code and message, and whether it was a move.
            let mut failed: BTreeMap<usize, (Code, String, bool)> = BTreeMap::new();
            let mut moved = None;
            for ((writer, positions), outcome) in per_shard.iter().zip(outcomes) {
                let Err(error) = outcome else { continue };
                let is_move = matches!(error, GatewayError::Moved { .. });
                if let GatewayError::Moved { epoch, .. } = &error {
                    moved = moved.max(Some(*epoch));
                } else {
                    warn!(shard = writer, documents = positions.len(), error = %error, "shard refused a batch");
                }
                for position in positions {
                    failed.entry(*position).or_insert_with(|| {
                        (error.code(), format!("shard {writer}: {error}"), is_move)
                    });
                }
            }
            let retry = moved.is_some() && attempt < MAX_PLACEMENT_TRIES;
            let mut again = Vec::new();
            for position in waiting {
                match failed.remove(&position) {
                    None => tally.summary.accepted += 1,
                    Some((_, _, true)) if retry => again.push(position),
                    Some((code, message, _)) => {
                        let pending = &batch[position];
                        tally.reject(pending.index, &pending.document.id, code, "id", message);
                    }
                }
            }
            waiting = again;
            if waiting.is_empty() {
                return;
            }
            if let Some(epoch) = moved {
                placement = self.refresh_placement(epoch).await;
            }
        }
    }

    /// Writes the documents at `positions` of `batch` to every replica of `shard` that takes
    /// writes, routed at `epoch`; fails unless all of them committed.
    async fn write_to_shard(
        &self,
        collection: &str,
        shard: u32,
        positions: &[usize],
        batch: &[Pending],
        vectors: Option<&[Vec<f32>]>,
        epoch: u64,
    ) -> Result<(), GatewayError> {
        let replicas = self.clients.shard_write_replicas(shard);
        if !replicas.iter().any(|replica| replica.ready) {
            return Err(GatewayError::Unavailable(format!(
                "shard {shard} has no ready replica"
            )));
        }
        let writes = replicas.iter().map(|replica| {
            let requests: Vec<IndexRequest> = positions
                .iter()
                .map(|position| {
                    let pending = &batch[*position];
                    IndexRequest {
                        document: Some(Document {
                            collection: collection.to_string(),
                            ..pending.document.clone()
                        }),
                        vector: vectors
                            .and_then(|vectors| vectors.get(*position).cloned())
                            .unwrap_or_default(),
                        version: pending.version,
                        placement_epoch: epoch,
                    }
                })
                .collect();
            let timeout = std::time::Duration::from_millis(self.config.write_timeout_ms);
            async move {
                let mut client = self.clients.retriever(replica)?;
                let mut request = tonic::Request::new(tokio_stream::iter(requests));
                request.set_timeout(timeout);
                match tokio::time::timeout(timeout, client.index(request)).await {
                    Ok(outcome) => outcome.map(|_| ()).map_err(|status| {
                        GatewayError::moved(&status)
                            .unwrap_or_else(|| GatewayError::downstream("retriever", status))
                    }),
                    Err(_) => Err(GatewayError::Unavailable(format!(
                        "shard {shard} replica {} did not commit within {} ms",
                        replica.replica, self.config.write_timeout_ms
                    ))),
                }
            }
        });
        let outcomes = join_all(writes).await;
        // A refusal by placement first: it is the one worth routing again for.
        let mut failures: Vec<GatewayError> =
            outcomes.into_iter().filter_map(Result::err).collect();
        failures.sort_by_key(|error| !matches!(error, GatewayError::Moved { .. }));
        match failures.into_iter().next() {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }
}
