//! One retriever shard replica: a persistent tantivy BM25 index over title and text, with
//! upsert and delete by id, fetch, corpus statistics, and scoring with cluster-wide
//! statistics; plus the tonic `Retriever` service that wraps it.

mod error;
mod schema;
mod service;
mod shard;
mod statistics;

pub use error::RetrieverError;
pub use service::RetrieverService;
pub use shard::{Shard, ShardCandidate, StoredDocument};
pub use statistics::CorpusStatistics;
