//! One retriever shard replica: a persistent tantivy BM25 index over title and text and a
//! usearch vector index kept consistent with it, with upsert and delete by id, fetch, corpus
//! statistics, BM25 scoring with cluster-wide statistics and vector search, metadata
//! filters; one such index per collection (`ShardCollections`); plus the tonic `Retriever`
//! service that wraps them, and peer recovery of a replica that (re)joins.

mod collections;
mod conversion;
mod error;
#[cfg(feature = "fault-injection")]
mod fault;
mod filter;
mod import;
pub mod metrics;
mod partitions;
mod ranking;
mod recovery;
mod schema;
mod service;
mod shard;
mod statistics;
mod vectors;
mod versions;
mod wire;

pub use collections::ShardCollections;
pub use error::RetrieverError;
#[cfg(feature = "fault-injection")]
pub use fault::InjectedFault;
pub use import::Importer;
pub use partitions::{PartitionedIndex, Selection};
pub use recovery::{catch_up, recover, CatchUpReport, RecoveryOptions};
pub use service::RetrieverService;
pub use shard::{IdVersion, Shard, ShardCandidate, StoredDocument};
pub use statistics::CorpusStatistics;
