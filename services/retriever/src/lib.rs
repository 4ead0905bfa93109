//! One retriever shard replica: a persistent tantivy BM25 index over title and text and a
//! usearch vector index kept consistent with it, with upsert and delete by id, fetch, corpus
//! statistics, BM25 scoring with cluster-wide statistics and vector search; plus the tonic
//! `Retriever` service that wraps it.

mod error;
pub mod metrics;
mod ranking;
mod schema;
mod service;
mod shard;
mod statistics;
mod vectors;

pub use error::RetrieverError;
pub use service::{InjectedFault, RetrieverService};
pub use shard::{Shard, ShardCandidate, StoredDocument};
pub use statistics::CorpusStatistics;
