//! The retriever's Prometheus metrics: documents and bytes written by `Index`, and the
//! latency of the tantivy commit that makes a write durable (the WAL fsync of this design),
//! by shard and replica, registered in the process registry of `quarry_kit::metrics`.

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounterVec};
use quarry_kit::metrics::{counter_vec, histogram_vec, LATENCY_BUCKETS};

pub struct RetrieverMetrics {
    pub ingest_documents: IntCounterVec,
    pub ingest_bytes: IntCounterVec,
    pub commit_duration: HistogramVec,
}

/// The retriever's metrics, registered on first use.
pub fn metrics() -> &'static RetrieverMetrics {
    static METRICS: LazyLock<RetrieverMetrics> = LazyLock::new(|| RetrieverMetrics {
        ingest_documents: counter_vec(
            "quarry_retriever_ingest_documents_total",
            "Documents written durably by Index, by shard and replica.",
            &["shard", "replica"],
        ),
        ingest_bytes: counter_vec(
            "quarry_retriever_ingest_bytes_total",
            "Bytes of document id, title and text written by Index, by shard and replica.",
            &["shard", "replica"],
        ),
        commit_duration: histogram_vec(
            "quarry_retriever_commit_duration_seconds",
            "Time of one tantivy commit (written and fsynced), by shard and replica.",
            &["shard", "replica"],
            &LATENCY_BUCKETS,
        ),
    });
    &METRICS
}

/// The label values of one replica.
pub fn replica_labels(shard: u32, replica: u32) -> [String; 2] {
    [shard.to_string(), replica.to_string()]
}

/// Registers the replica's metrics so that the first scrape lists them at zero.
pub fn register(shard: u32, replica: u32) {
    let metrics = metrics();
    let labels = replica_labels(shard, replica);
    let labels = [labels[0].as_str(), labels[1].as_str()];
    metrics.ingest_documents.with_label_values(&labels);
    metrics.ingest_bytes.with_label_values(&labels);
    metrics.commit_duration.with_label_values(&labels);
}
