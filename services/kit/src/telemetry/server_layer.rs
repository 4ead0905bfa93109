//! `GrpcTraceLayer`: the tower layer every role's server runs its calls through while
//! tracing is on. It continues the caller's trace from the `traceparent` header (or starts
//! one), opens the call's server span — `rpc.service`, `rpc.method`, the role, shard and
//! replica — runs the handler inside it, and closes it with the gRPC status code when the
//! response (a stream included) ends. Health checks and reflection are not traced.
//!
//! The server span also declares the request attributes the handlers record on it with
//! `tracing::Span::current().record(..)` (k, hits, strategy, partial, cache hit, ...):
//! one span per hop rather than a handler span inside each server span, since every span
//! costs throughput (`quarry bench tracing`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracing::field::Empty;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation::{extract_context, is_enabled};
use crate::grpc_body::{grpc_status, CompletionBody};
use crate::metrics::{code_name, service_and_method};

/// Who serves: the attributes every server span of this role carries.
#[derive(Debug, Clone, Copy)]
pub struct GrpcTraceLayer {
    pub role: &'static str,
    /// A retriever's shard and replica.
    pub shard: Option<u32>,
    pub replica: Option<u32>,
}

impl<S> Layer<S> for GrpcTraceLayer {
    type Service = GrpcTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTraceService {
            inner,
            server: *self,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcTraceService<S> {
    inner: S,
    server: GrpcTraceLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for GrpcTraceService<S>
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
        // Health probes and reflection would be a trace every few seconds each.
        if !is_enabled() || service.starts_with("grpc.") {
            let response = self.inner.call(request);
            return Box::pin(async move {
                let response = response.await?;
                let header_code = grpc_status(response.headers());
                Ok(response.map(|body| CompletionBody::new(body, header_code, Box::new(|_| {}))))
            });
        }
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = format!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            error.code = Empty,
            role = self.server.role,
            // The API key the gateway's front door admitted the call with (its id only).
            key_id = Empty,
            shard = Empty,
            replica = Empty,
            // What the handler records about the request (see `record_request`).
            k = Empty,
            hits = Empty,
            keyword_k = Empty,
            vector_k = Empty,
            keyword_hits = Empty,
            vector_hits = Empty,
            strategy = Empty,
            partial = Empty,
            shards_asked = Empty,
            shards_answered = Empty,
            hedges = Empty,
            statistics = Empty,
            stale = Empty,
            passages = Empty,
            confidence = Empty,
            cache_hit = Empty,
            reranked = Empty,
            query_type = Empty,
            texts = Empty,
        );
        if let Some(shard) = self.server.shard {
            span.record("shard", shard);
        }
        if let Some(replica) = self.server.replica {
            span.record("replica", replica);
        }
        let _ = span.set_parent(extract_context(request.headers()));
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let span = tracing::Span::current();
                let response = response.await?;
                let header_code = grpc_status(response.headers());
                Ok(response.map(|body| {
                    CompletionBody::new(
                        body,
                        header_code,
                        Box::new(move |code| {
                            span.record("rpc.grpc.status_code", code as i32);
                            if code != tonic::Code::Ok {
                                span.record("otel.status_code", "ERROR");
                                span.record("error.code", code_name(code));
                            }
                        }),
                    )
                }))
            }
            .instrument(span),
        )
    }
}
