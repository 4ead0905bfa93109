//! Span export over OTLP/gRPC. Finished spans go to the SDK's `BatchSpanProcessor` (its own
//! thread, batches, `OTEL_BSP_*` settings) through `BoundedQueue`, which counts the spans
//! waiting and drops — and counts — a span instead of handing it to a full queue: a request
//! never waits for the exporter, and every lost span shows in
//! `quarry_trace_spans_dropped_total`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::resource::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter,
    SpanProcessor, OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT,
};

use crate::metrics::trace_export;

/// Why spans cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(String),
}

/// The queue bound: `OTEL_BSP_MAX_QUEUE_SIZE`, or the specification's 2048.
fn max_queue_size() -> usize {
    std::env::var(OTEL_BSP_MAX_QUEUE_SIZE)
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|size| *size > 0)
        .unwrap_or(OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT)
}

/// A tracer provider exporting to the OTLP/gRPC endpoint of the standard environment
/// variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, headers,
/// timeout), sampling as `OTEL_TRACES_SAMPLER` says. Must be called inside a tokio runtime.
pub fn otlp_provider(resource: Resource) -> Result<SdkTracerProvider, ExportError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|error| ExportError::Exporter(error.to_string()))?;
    Ok(provider_with(exporter, resource, max_queue_size()))
}

/// A tracer provider exporting to `exporter` through a bounded, counted queue.
pub fn provider_with<E>(exporter: E, resource: Resource, queue_size: usize) -> SdkTracerProvider
where
    E: SpanExporter + 'static,
{
    let waiting = Arc::new(AtomicUsize::new(0));
    let counted = CountingExporter {
        inner: exporter,
        waiting: Arc::clone(&waiting),
    };
    let batch = BatchSpanProcessor::builder(counted)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(queue_size)
                .build(),
        )
        .build();
    SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(BoundedQueue {
            inner: batch,
            waiting,
            capacity: queue_size,
        })
        .build()
}

/// Admits a finished span only while fewer than `capacity` are waiting for export, so the
/// batch processor's own queue (of the same size) is never full; a span that does not fit
/// is dropped here and counted.
#[derive(Debug)]
struct BoundedQueue<P> {
    inner: P,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
}

impl<P: SpanProcessor> SpanProcessor for BoundedQueue<P> {
    fn on_start(&self, span: &mut Span, context: &Context) {
        self.inner.on_start(span, context);
    }

    fn on_end(&self, span: SpanData) {
        let admitted = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < self.capacity).then_some(waiting + 1)
            })
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            trace_export().spans_dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Releases the queue's places as batches leave for the exporter, and counts them.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    waiting: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        self.waiting.fetch_sub(spans, Ordering::AcqRel);
        let metrics = trace_export();
        let exported = self.inner.export(batch).await;
        match exported {
            Ok(()) => metrics.spans_exported.inc_by(spans as u64),
            Err(_) => metrics.export_failures.inc(),
        }
        exported
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};

    use super::*;

    /// An exporter that takes 100 ms per batch and counts the spans it is given.
    #[derive(Debug, Clone, Default)]
    struct SlowExporter {
        received: Arc<AtomicUsize>,
    }

    impl SpanExporter for SlowExporter {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            std::thread::sleep(Duration::from_millis(100));
            self.received.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_spans_without_making_anyone_wait() {
        let exporter = SlowExporter::default();
        let received = Arc::clone(&exporter.received);
        let dropped_before = trace_export().spans_dropped.get();
        let provider = provider_with(exporter, Resource::builder_empty().build(), 16);
        let tracer = provider.tracer("test");
        let started = Instant::now();
        for _ in 0..1000 {
            tracer.start("busy").end();
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(90),
            "ending spans took {elapsed:?}"
        );
        provider.shutdown().unwrap();
        let dropped = (trace_export().spans_dropped.get() - dropped_before) as usize;
        assert!(dropped >= 900, "{dropped} dropped");
        assert_eq!(
            received.load(Ordering::SeqCst) + dropped,
            1000,
            "every span is either exported or counted as dropped"
        );
    }
}
