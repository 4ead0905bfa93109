//! The gateway's Prometheus metrics: the fan-out (shards asked and answered, hedges,
//! retries, partial results, per-shard call latency) and ingest (documents by outcome,
//! bytes), registered in the process registry of `quarry_kit::metrics`.

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};
use quarry_kit::metrics::{counter, counter_vec, histogram_vec, LATENCY_BUCKETS};

pub struct GatewayMetrics {
    pub shards_asked: IntCounter,
    pub shards_answered: IntCounter,
    pub hedges: IntCounter,
    pub retries: IntCounter,
    pub partial_results: IntCounter,
    pub shard_call_duration: HistogramVec,
    pub statistics: IntCounterVec,
    pub shard_reply_bytes: IntCounterVec,
    pub ingest_documents: IntCounterVec,
    pub ingest_bytes: IntCounter,
    pub auth: IntCounterVec,
    pub calls_by_key: IntCounterVec,
    pub rejected: IntCounterVec,
    pub admitted: IntGaugeVec,
    pub key_reload_errors: IntCounter,
    pub cache: IntCounterVec,
    pub cache_errors: IntCounterVec,
    pub rerank: IntCounterVec,
}

/// The gateway's metrics, registered on first use (`register` lists them from the start).
pub fn metrics() -> &'static GatewayMetrics {
    static METRICS: LazyLock<GatewayMetrics> = LazyLock::new(|| GatewayMetrics {
        shards_asked: counter(
            "quarry_gateway_fanout_shards_asked_total",
            "Shards a fan-out asked (one per shard per fan-out, whatever the replicas tried).",
        ),
        shards_answered: counter(
            "quarry_gateway_fanout_shards_answered_total",
            "Shards that answered a fan-out.",
        ),
        hedges: counter(
            "quarry_gateway_hedges_total",
            "Shard calls hedged on a second replica after outliving the shard's p95.",
        ),
        retries: counter(
            "quarry_gateway_retries_total",
            "Shard calls retried on another replica after a failure.",
        ),
        partial_results: counter(
            "quarry_gateway_partial_results_total",
            "Searches and questions answered without some shards.",
        ),
        shard_call_duration: histogram_vec(
            "quarry_gateway_shard_call_duration_seconds",
            "One call to one shard replica, as the gateway saw it, by shard.",
            &["shard"],
            &LATENCY_BUCKETS,
        ),
        statistics: counter_vec(
            "quarry_gateway_statistics_total",
            "Keyword searches on several shards by where their BM25 statistics came from: \
             cached (confirmed by every shard), collected (a CollectStats round trip) or \
             refreshed (a shard had changed; searched again).",
            &["source"],
        ),
        shard_reply_bytes: counter_vec(
            "quarry_gateway_shard_reply_bytes_total",
            "Bytes of the shard replies the gateway received (protobuf encoded), by rpc.",
            &["rpc"],
        ),
        ingest_documents: counter_vec(
            "quarry_gateway_ingest_documents_total",
            "Documents received by Ingest, by outcome (accepted or rejected).",
            &["outcome"],
        ),
        ingest_bytes: counter(
            "quarry_gateway_ingest_bytes_total",
            "Bytes of document id, title and text received by Ingest.",
        ),
        auth: counter_vec(
            "quarry_gateway_auth_total",
            "Calls checked against the API keys, by outcome: ok, missing, malformed, unknown, \
             expired, revoked, denied (a valid key without the scope or collection).",
            &["outcome"],
        ),
        calls_by_key: counter_vec(
            "quarry_gateway_calls_by_key_total",
            "Calls admitted, by API key id (never the secret) and method class.",
            &["key_id", "class"],
        ),
        rejected: counter_vec(
            "quarry_gateway_admission_rejected_total",
            "Calls answered RESOURCE_EXHAUSTED at once, by method class and reason \
             (concurrency: the class was at its limit; rate: the key's rate was spent).",
            &["class", "reason"],
        ),
        admitted: quarry_kit::metrics::register(
            IntGaugeVec::new(
                Opts::new(
                    "quarry_gateway_admitted_in_flight",
                    "Calls admitted and not yet finished, by method class.",
                ),
                &["class"],
            )
            .expect("valid metric name"),
        ),
        key_reload_errors: counter(
            "quarry_gateway_key_reload_errors_total",
            "Times the API keys could not be re-read (the last good keys stayed in force).",
        ),
        cache: counter_vec(
            "quarry_gateway_cache_total",
            "Answer-cache lookups, by kind (answer, analysis) and outcome (hit, miss).",
            &["kind", "outcome"],
        ),
        cache_errors: counter_vec(
            "quarry_gateway_cache_errors_total",
            "Answer-cache (Redis) calls that failed or timed out, by kind and operation \
             (get, set); each made the lookup a miss, never the Ask a failure.",
            &["kind", "operation"],
        ),
        rerank: counter_vec(
            "quarry_gateway_rerank_total",
            "Rerank attempts, by outcome: reranked, or fallback (the reranker failed and the \
             fused order was kept).",
            &["outcome"],
        ),
    });
    &METRICS
}

/// Registers the gateway's metrics so that the first scrape lists them at zero.
pub fn register() {
    let metrics = metrics();
    for rpc in ["collect_stats", "search", "fetch", "shard_info"] {
        metrics.shard_reply_bytes.with_label_values(&[rpc]);
    }
    for source in ["cached", "collected", "refreshed"] {
        metrics.statistics.with_label_values(&[source]);
    }
    for outcome in ["accepted", "rejected"] {
        metrics.ingest_documents.with_label_values(&[outcome]);
    }
    for kind in ["answer", "analysis"] {
        for outcome in ["hit", "miss"] {
            metrics.cache.with_label_values(&[kind, outcome]);
        }
        for operation in ["get", "set"] {
            metrics.cache_errors.with_label_values(&[kind, operation]);
        }
    }
    for outcome in ["reranked", "fallback"] {
        metrics.rerank.with_label_values(&[outcome]);
    }
    for class in crate::front::Class::ALL {
        metrics.admitted.with_label_values(&[class.name()]);
        for reason in ["concurrency", "rate"] {
            metrics.rejected.with_label_values(&[class.name(), reason]);
        }
    }
}
