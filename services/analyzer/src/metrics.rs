//! The analyzer's Prometheus metrics: cache hits and misses by cache (analysis, embedding),
//! the size and duration of each embedding batch, and what the optional chat-model backend
//! answered (used, or a fallback by cause), registered in the process registry of
//! `quarry_kit::metrics`.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounterVec};
use quarry_kit::metrics::{counter_vec, register as register_metric, LATENCY_BUCKETS};

pub struct AnalyzerMetrics {
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    pub batch_size: Histogram,
    pub batch_duration: Histogram,
    pub model_analyses: IntCounterVec,
    pub embed_rejected: IntCounterVec,
}

/// Texts per batch: powers of two up to the largest request (1024).
const BATCH_SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let options = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register_metric(Histogram::with_opts(options).expect("valid metric name"))
}

/// The analyzer's metrics, registered on first use.
pub fn metrics() -> &'static AnalyzerMetrics {
    static METRICS: LazyLock<AnalyzerMetrics> = LazyLock::new(|| AnalyzerMetrics {
        cache_hits: counter_vec(
            "quarry_analyzer_cache_hits_total",
            "Lookups answered from a cache, by cache (analysis or embedding).",
            &["cache"],
        ),
        cache_misses: counter_vec(
            "quarry_analyzer_cache_misses_total",
            "Lookups a cache could not answer, by cache (analysis or embedding).",
            &["cache"],
        ),
        batch_size: histogram(
            "quarry_analyzer_embedding_batch_size",
            "Texts embedded together in one encoder call.",
            &BATCH_SIZE_BUCKETS,
        ),
        batch_duration: histogram(
            "quarry_analyzer_embedding_batch_duration_seconds",
            "Time of one encoder call over a batch.",
            &LATENCY_BUCKETS,
        ),
        model_analyses: counter_vec(
            "quarry_analyzer_model_analyses_total",
            "Questions sent to the chat model, by outcome: answered, malformed, backend.",
            &["outcome"],
        ),
        embed_rejected: counter_vec(
            "quarry_analyzer_embed_requests_dropped_total",
            "Embedding requests not encoded, by reason: queue_full (answered \
             RESOURCE_EXHAUSTED at once) or abandoned (the caller had gone when its turn came).",
            &["reason"],
        ),
    });
    &METRICS
}

/// Registers the analyzer's metrics so that the first scrape lists them at zero.
pub fn register() {
    let metrics = metrics();
    for cache in ["analysis", "embedding"] {
        metrics.cache_hits.with_label_values(&[cache]);
        metrics.cache_misses.with_label_values(&[cache]);
    }
    for reason in ["queue_full", "abandoned"] {
        metrics.embed_rejected.with_label_values(&[reason]);
    }
    for outcome in ["answered", "malformed", "backend"] {
        metrics.model_analyses.with_label_values(&[outcome]);
    }
}
