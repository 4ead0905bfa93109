//! The process's Prometheus registry and the metrics every role shares: gRPC requests by
//! service, method and status code, their latency and in-flight count (`grpc_layer`), the
//! span exporter's counters, and process memory and CPU (`process`); `/metrics` serves them
//! in the Prometheus text format (`http`). Role crates register their own metrics here too.

mod grpc_layer;
mod http;
mod process;

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

pub use grpc_layer::{code_name, service_and_method, GrpcMetricsLayer, GrpcMetricsService};
pub use http::{serve_metrics, spawn_metrics_endpoint};

/// Every metric of this process (all roles of `quarry up` share it).
static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// Latency buckets in seconds, 0.25 ms to about 16 s: fine at the fast end, where cached
/// analyses and shard searches sit, and wide enough for generation.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192, 16.384,
];

/// The process's registry.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Registers `collector`, panicking only on a programming error (a name registered twice
/// with different help or labels); the metrics of one name are created once, in a static.
pub fn register<C: Collector + Clone + 'static>(collector: C) -> C {
    if let Err(error) = REGISTRY.register(Box::new(collector.clone())) {
        debug_assert!(false, "metric registered twice: {error}");
        tracing::warn!(error = %error, "metric not registered");
    }
    collector
}

/// A counter with labels, registered.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let counter = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
    register(counter)
}

/// A counter without labels, registered.
pub fn counter(name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help).expect("valid metric name");
    register(counter)
}

/// A histogram with labels and the given buckets, registered.
pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let options = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let histogram = HistogramVec::new(options, labels).expect("valid metric name");
    register(histogram)
}

/// Every registered metric in the Prometheus text format (0.0.4), process metrics refreshed.
pub fn encode_text() -> String {
    process::refresh();
    let families = REGISTRY.gather();
    let mut buffer = Vec::new();
    if let Err(error) = prometheus::TextEncoder::new().encode(&families, &mut buffer) {
        tracing::warn!(error = %error, "encoding metrics failed");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// The span exporter's counters (see `telemetry::export`).
pub struct TraceExportMetrics {
    pub spans_exported: IntCounter,
    pub spans_dropped: IntCounter,
    pub export_failures: IntCounter,
}

/// The span exporter's counters, registered on first use.
pub fn trace_export() -> &'static TraceExportMetrics {
    static METRICS: LazyLock<TraceExportMetrics> = LazyLock::new(|| TraceExportMetrics {
        spans_exported: counter(
            "quarry_trace_spans_exported_total",
            "Spans handed to the OTLP exporter.",
        ),
        spans_dropped: counter(
            "quarry_trace_spans_dropped_total",
            "Spans dropped because the export queue was full (requests never wait for it).",
        ),
        export_failures: counter(
            "quarry_trace_export_failures_total",
            "OTLP export calls that failed (their spans are lost).",
        ),
    });
    &METRICS
}

/// Registers the metrics every role has, so that they are listed from the first scrape.
pub fn register_common() {
    grpc_layer::metrics();
    process::metrics();
    trace_export();
}
