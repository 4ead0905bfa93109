//! W3C trace context through gRPC metadata, in both directions: `InjectTraceContext`, the
//! client interceptor every channel between members carries, writes the current span's
//! `traceparent`/`tracestate` into each outgoing call; `extract_context` reads them from an
//! incoming call's headers for the server layer. Both are no-ops while tracing is off.

use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Whether spans carry OpenTelemetry context in this process (set once at start-up).
static TRACE_CONTEXT_ON: AtomicBool = AtomicBool::new(false);

pub(super) fn enable() {
    TRACE_CONTEXT_ON.store(true, Ordering::Release);
}

/// Whether trace context is created, propagated and exported in this process.
pub fn is_enabled() -> bool {
    TRACE_CONTEXT_ON.load(Ordering::Acquire)
}

/// Writes into gRPC metadata.
struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(key) = MetadataKey::from_bytes(key.as_bytes()) else {
            return;
        };
        if let Ok(value) = MetadataValue::try_from(value.as_str()) {
            self.0.insert(key, value);
        }
    }
}

/// Reads from HTTP/2 headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

/// Writes the current span's context into `metadata`.
pub fn inject_current_context(metadata: &mut MetadataMap) {
    if !is_enabled() {
        return;
    }
    // The tracing layer activates each entered span's OpenTelemetry context.
    let context = opentelemetry::Context::current();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

/// The remote parent an incoming call names in its headers (an empty context when none).
pub fn extract_context(headers: &HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// The client interceptor on every channel between members.
#[derive(Debug, Clone, Copy, Default)]
pub struct InjectTraceContext;

impl Interceptor for InjectTraceContext {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        inject_current_context(request.metadata_mut());
        Ok(request)
    }
}

/// A channel whose calls carry the caller's trace context.
pub type TracedChannel = InterceptedService<Channel, InjectTraceContext>;

/// Wraps `channel` so that its calls carry the caller's trace context.
pub fn traced(channel: Channel) -> TracedChannel {
    InterceptedService::new(channel, InjectTraceContext)
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_metadata_and_headers() {
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut incoming = HeaderMap::new();
        incoming.insert("traceparent", traceparent.parse().unwrap());
        let propagator = TraceContextPropagator::new();
        let context = propagator.extract(&HeaderExtractor(&incoming));
        let span_context = context.span().span_context().clone();
        assert_eq!(
            span_context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(span_context.is_remote());
        let mut metadata = MetadataMap::new();
        propagator.inject_context(&context, &mut MetadataInjector(&mut metadata));
        assert_eq!(metadata.get("traceparent").unwrap(), traceparent);
    }
}
