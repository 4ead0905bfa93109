//! A client for OpenAI-compatible `/v1/chat/completions` (and `/v1/rerank`) shared by the
//! generator, the evaluator and the gateway's reranker: base URLs balanced round-robin with ejection, retries with backoff, and
//! server-sent-event streaming that never retries once a token has been handed out.

mod chat;
mod endpoints;
mod error;
#[cfg(any(test, feature = "fake-openai"))]
pub mod fake_server;
mod retry;
mod sse;

pub use chat::{ChatClient, ChatMessage, ChatStream};
pub use endpoints::EndpointPool;
pub use error::ChatError;
pub use retry::RetryPolicy;
pub use sse::{SseDecoder, SseEvent};

#[cfg(test)]
mod chat_tests;
