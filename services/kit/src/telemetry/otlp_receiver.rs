//! `OtlpReceiver`: an OTLP/gRPC trace receiver in this process (opentelemetry-proto's
//! `TraceService` on tonic), for tests that follow one question across processes and for
//! `quarry bench tracing`. It keeps every span it receives, flattened, or only counts them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// One received span, with the `service.name` of the process that sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    pub service_name: String,
    pub name: String,
    /// `server`, `client`, `internal`, `producer` or `consumer`.
    pub kind: &'static str,
    /// Lowercase hex, as in `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Attribute values as text (`true`, `42`, `quarry.v1.Retriever`).
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    keep: bool,
    spans: Mutex<Vec<ReceivedSpan>>,
    count: AtomicU64,
}

/// A running receiver; it stops when dropped.
pub struct OtlpReceiver {
    address: SocketAddr,
    received: Arc<Received>,
    stop: CancellationToken,
}

impl OtlpReceiver {
    /// Listens on a free loopback port; `keep_spans` false only counts them.
    pub async fn start(keep_spans: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let received = Arc::new(Received {
            keep: keep_spans,
            ..Received::default()
        });
        let stop = CancellationToken::new();
        let service = TraceServiceServer::new(Collector {
            received: Arc::clone(&received),
        })
        .max_decoding_message_size(64 * 1024 * 1024);
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    stopped.cancelled_owned(),
                )
                .await;
        });
        Ok(Self {
            address,
            received,
            stop,
        })
    }

    /// The `OTEL_EXPORTER_OTLP_ENDPOINT` of this receiver.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Spans received so far (empty when only counting).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received
            .spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// How many spans were received so far.
    pub fn count(&self) -> u64 {
        self.received.count.load(Ordering::Relaxed)
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Collector {
    received: Arc<Received>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut flattened = Vec::new();
        let mut count = 0;
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| {
                    resource
                        .attributes
                        .iter()
                        .find(|attribute| attribute.key == "service.name")
                })
                .map(|attribute| text(attribute.value.as_ref()))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                count += scope_spans.spans.len() as u64;
                if !self.received.keep {
                    continue;
                }
                for span in scope_spans.spans {
                    flattened.push(ReceivedSpan {
                        service_name: service_name.clone(),
                        kind: kind_name(span.kind),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        start_unix_nanos: span.start_time_unix_nano,
                        end_unix_nanos: span.end_time_unix_nano,
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        self.received.count.fetch_add(count, Ordering::Relaxed);
        if !flattened.is_empty() {
            self.received
                .spans
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend(flattened);
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|attribute| (attribute.key.clone(), text(attribute.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "internal",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
