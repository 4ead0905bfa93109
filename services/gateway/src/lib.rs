//! The gateway role: Quarry's public API (`quarry.v1.Quarry`). It validates requests,
//! analyses questions, plans retrieval, fans searches out to every shard with cluster-wide
//! BM25 statistics, merges the hits, builds the numbered context, and has the generator and
//! the evaluator answer and judge — every hop a gRPC call to a member found by discovery.

mod answer_cache;
mod ask;
mod cluster_clients;
mod collections;
mod context;
pub mod coordinator;
mod deadline;
mod documents;
mod error;
mod fan_out;
pub mod front;
mod fusion;
mod gateway;
mod ingest;
pub mod metrics;
mod plan;
mod rerank;
mod retrieve;
mod search;
mod service;
mod shard_client;
mod validate;

pub use answer_cache::AnswerCache;
pub use cluster_clients::ClusterClients;
pub use error::GatewayError;
pub use fan_out::sum_statistics;
pub use gateway::Gateway;
pub use service::QuarryService;
pub use shard_client::{ShardCall, ShardClient, ShardReply, Shards};
