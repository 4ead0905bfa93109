//! `CompletionBody`: a gRPC response body that reports the call's status code exactly once —
//! from its trailers when the body ends, from the headers of a trailers-only reply, or as
//! CANCELLED when the client goes away first — so that server layers can time and count a
//! call (streaming ones included) when it really finishes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tonic::Code;

/// Called once with the call's final code.
pub type OnComplete = Box<dyn FnOnce(Code) + Send>;

/// The `grpc-status` of a header or trailer map, when it has one.
pub fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// A response body that calls `on_complete` with the call's code when it ends or is dropped.
pub struct CompletionBody<B> {
    inner: B,
    code: Option<Code>,
    on_complete: Option<OnComplete>,
    /// Where the bytes of data frames sent so far are added, when counted.
    sent_bytes: Option<Arc<AtomicU64>>,
}

impl<B> CompletionBody<B> {
    /// Wraps `inner`; `header_code` is the `grpc-status` of the response headers, if any.
    pub fn new(inner: B, header_code: Option<Code>, on_complete: OnComplete) -> Self {
        Self {
            inner,
            code: header_code,
            on_complete: Some(on_complete),
            sent_bytes: None,
        }
    }

    /// Adds the size of every data frame (as sent: compressed, if the call is) to `counter`
    /// before `on_complete` runs.
    pub fn counting_bytes(mut self, counter: Arc<AtomicU64>) -> Self {
        self.sent_bytes = Some(counter);
        self
    }

    fn complete(&mut self, fallback: Code) {
        if let Some(on_complete) = self.on_complete.take() {
            on_complete(self.code.unwrap_or(fallback));
        }
    }
}

impl<B> Body for CompletionBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(counter)) = (frame.data_ref(), &this.sent_bytes) {
                    counter.fetch_add(data.remaining() as u64, Ordering::Relaxed);
                }
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.code = Some(code);
                    this.complete(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.complete(Code::Internal),
            // A body that ends without a status: tonic always sends one, so this is only
            // reached after the trailers, and `complete` has already run.
            Poll::Ready(None) => this.complete(Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for CompletionBody<B> {
    fn drop(&mut self) {
        // A trailers-only reply is never polled; a body dropped midway was cancelled.
        self.complete(Code::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, Full};

    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<Code>>>, OnComplete) {
        let codes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&codes);
        let on_complete: OnComplete = Box::new(move |code| sink.lock().unwrap().push(code));
        (codes, on_complete)
    }

    #[test]
    fn trailers_only_replies_report_their_header_code_once() {
        let (codes, on_complete) = recorder();
        drop(CompletionBody::new(
            Full::new(&b""[..]),
            Some(Code::NotFound),
            on_complete,
        ));
        assert_eq!(*codes.lock().unwrap(), [Code::NotFound]);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_cancelled_and_a_read_one_is_ok() {
        let (codes, on_complete) = recorder();
        drop(CompletionBody::new(Full::new(&b"x"[..]), None, on_complete));
        assert_eq!(*codes.lock().unwrap(), [Code::Cancelled]);

        let (codes, on_complete) = recorder();
        let body = CompletionBody::new(Full::new(&b"x"[..]), None, on_complete);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"x");
        assert_eq!(*codes.lock().unwrap(), [Code::Ok]);
    }
}
