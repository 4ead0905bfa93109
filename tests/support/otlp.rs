//! Following spans in an `OtlpReceiver`: waiting for a trace to arrive, and walking it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use quarry_kit::telemetry::otlp_receiver::{OtlpReceiver, ReceivedSpan};

/// The spans of one trace, by span id.
pub struct Trace {
    pub spans: Vec<ReceivedSpan>,
}

impl Trace {
    pub fn of(receiver: &OtlpReceiver, trace_id: &str) -> Self {
        let spans = receiver
            .spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect();
        Self { spans }
    }

    pub fn by_id(&self) -> HashMap<&str, &ReceivedSpan> {
        self.spans
            .iter()
            .map(|span| (span.span_id.as_str(), span))
            .collect()
    }

    /// Server spans of a gRPC method (`Search`) sent by a service (`quarry-retriever`).
    pub fn server_spans(&self, service_name: &str, method: &str) -> Vec<&ReceivedSpan> {
        self.spans
            .iter()
            .filter(|span| {
                span.service_name == service_name
                    && span.kind == "server"
                    && span.attribute("rpc.method") == Some(method)
            })
            .collect()
    }

    /// The service that sent a span's parent, when the parent is in the trace.
    pub fn parent_service(&self, span: &ReceivedSpan) -> Option<&str> {
        self.spans
            .iter()
            .find(|candidate| candidate.span_id == span.parent_span_id)
            .map(|parent| parent.service_name.as_str())
    }
}

/// Waits until `done` holds for the receiver's spans, or panics after `patience`.
pub async fn wait_for_spans(
    receiver: &OtlpReceiver,
    patience: Duration,
    done: impl Fn(&[ReceivedSpan]) -> bool,
) {
    let started = Instant::now();
    loop {
        if done(&receiver.spans()) {
            return;
        }
        assert!(
            started.elapsed() < patience,
            "spans did not arrive in {patience:?}; received {:#?}",
            receiver
                .spans()
                .iter()
                .map(|span| (&span.service_name, &span.name, span.attribute("rpc.method")))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
