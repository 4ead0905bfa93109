//! `GrpcMetricsLayer`: the tower layer every role's server runs its calls through. It counts
//! requests by service, method and status code, times them into a histogram (so p50/p95/p99
//! are one `histogram_quantile` away) and keeps an in-flight gauge by service; a streaming
//! call is timed until its response stream ends; the bytes of every response body are
//! counted as sent (after compression). Labels come only from Quarry's own service
//! and method names, never from what a client makes up.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use tower::{Layer, Service};

use super::{counter_vec, histogram_vec, register, LATENCY_BUCKETS};
use crate::grpc_body::{grpc_status, CompletionBody, OnComplete};

/// The server-side gRPC metrics.
pub struct GrpcServerMetrics {
    pub requests: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub duration: HistogramVec,
    pub in_flight: IntGaugeVec,
}

pub(super) fn metrics() -> &'static GrpcServerMetrics {
    static METRICS: LazyLock<GrpcServerMetrics> = LazyLock::new(|| GrpcServerMetrics {
        requests: counter_vec(
            "quarry_grpc_server_requests_total",
            "gRPC calls finished, by service, method and status code.",
            &["service", "method", "code"],
        ),
        response_bytes: counter_vec(
            "quarry_grpc_server_response_bytes_total",
            "Bytes of gRPC response bodies sent (framing included, after compression), by \
             service and method.",
            &["service", "method"],
        ),
        duration: histogram_vec(
            "quarry_grpc_server_request_duration_seconds",
            "Time from a gRPC call's arrival to the end of its response.",
            &["service", "method"],
            &LATENCY_BUCKETS,
        ),
        in_flight: register(
            IntGaugeVec::new(
                Opts::new(
                    "quarry_grpc_server_requests_in_flight",
                    "gRPC calls being served now.",
                ),
                &["service"],
            )
            .expect("valid metric name"),
        ),
    });
    &METRICS
}

/// The gRPC services Quarry serves; any other path is labelled `unknown`, so that a client
/// cannot grow the label set.
const KNOWN_SERVICES: [&str; 8] = [
    "quarry.v1.Quarry",
    "quarry.v1.Analyzer",
    "quarry.v1.Retriever",
    "quarry.v1.Generator",
    "quarry.v1.Evaluator",
    "quarry.v1.Scheduler",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
];

/// Longest method name taken as a label.
const MAX_METHOD_CHARS: usize = 64;

/// The service and method of a gRPC path (`/quarry.v1.Retriever/Search`), or
/// `("unknown", "unknown")` for a path outside `KNOWN_SERVICES`.
pub fn service_and_method(path: &str) -> (&str, &str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let plain_method = !method.is_empty()
        && method.len() <= MAX_METHOD_CHARS
        && method
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
    if KNOWN_SERVICES.contains(&service) && plain_method {
        (service, method)
    } else {
        ("unknown", "unknown")
    }
}

/// A gRPC code as the protocol spells it (`INVALID_ARGUMENT`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Counts and times every call of the service it wraps.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for GrpcMetricsService<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    ResponseBody: Send + 'static,
{
    type Response = http::Response<CompletionBody<ResponseBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let (service, method) = service_and_method(request.uri().path());
        let (service, method) = (service.to_string(), method.to_string());
        let in_flight = metrics().in_flight.with_label_values(&[&service]);
        in_flight.inc();
        let started = Instant::now();
        let sent_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = std::sync::Arc::clone(&sent_bytes);
        // Settled exactly once: by the response body, by an error, or as CANCELLED when the
        // call is dropped before it answers (a client that hung up, a losing hedge).
        let mut pending = PendingCall(Some(Box::new(move |code| {
            in_flight.dec();
            let bytes = counted.load(std::sync::atomic::Ordering::Relaxed);
            record(&service, &method, code, started, bytes);
        })));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response,
                Err(error) => {
                    pending.settle(tonic::Code::Unknown);
                    return Err(error);
                }
            };
            let header_code = grpc_status(response.headers());
            let on_complete = pending.take();
            Ok(response.map(|body| {
                CompletionBody::new(body, header_code, on_complete).counting_bytes(sent_bytes)
            }))
        })
    }
}

/// A call's completion callback until the response takes it over; run with CANCELLED if
/// the call is dropped first.
struct PendingCall(Option<OnComplete>);

impl PendingCall {
    fn settle(&mut self, code: tonic::Code) {
        if let Some(on_complete) = self.0.take() {
            on_complete(code);
        }
    }

    /// The callback, for the response body to run; a no-op if already settled.
    fn take(&mut self) -> OnComplete {
        self.0.take().unwrap_or_else(|| Box::new(|_| {}))
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.settle(tonic::Code::Cancelled);
    }
}

fn record(service: &str, method: &str, code: tonic::Code, started: Instant, bytes: u64) {
    // A method the service does not have: its name is the client's choice, not a label.
    let method = if code == tonic::Code::Unimplemented {
        "unknown"
    } else {
        method
    };
    let metrics = metrics();
    metrics
        .requests
        .with_label_values(&[service, method, code_name(code)])
        .inc();
    metrics
        .duration
        .with_label_values(&[service, method])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .response_bytes
        .with_label_values(&[service, method])
        .inc_by(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_dropped_before_it_answers_is_settled_once_as_cancelled() {
        let codes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&codes);
        let pending = PendingCall(Some(Box::new(move |code| seen.lock().unwrap().push(code))));
        drop(pending);
        assert_eq!(*codes.lock().unwrap(), vec![tonic::Code::Cancelled]);

        let seen = std::sync::Arc::clone(&codes);
        let mut answered = PendingCall(Some(Box::new(move |code| seen.lock().unwrap().push(code))));
        let handed_over = answered.take();
        drop(answered);
        handed_over(tonic::Code::Ok);
        assert_eq!(
            *codes.lock().unwrap(),
            vec![tonic::Code::Cancelled, tonic::Code::Ok]
        );
    }

    #[test]
    fn paths_split_into_known_services_and_methods() {
        assert_eq!(
            service_and_method("/quarry.v1.Retriever/Search"),
            ("quarry.v1.Retriever", "Search")
        );
        assert_eq!(
            service_and_method("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(service_and_method("/evil/x"), ("unknown", "unknown"));
        assert_eq!(
            service_and_method("/quarry.v1.Made.Up/Search"),
            ("unknown", "unknown")
        );
        assert_eq!(
            service_and_method("/quarry.v1.Quarry/a b"),
            ("unknown", "unknown")
        );
    }
}
