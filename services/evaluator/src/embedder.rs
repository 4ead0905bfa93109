//! `AnalyzerEmbedder`: sentence embeddings for the heuristic from a ready analyzer, found
//! through discovery and called over gRPC (`Analyzer.Embed`, one call per evaluation, under
//! a deadline). Every failure is counted and reported, so the caller can judge lexically.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quarry_kit::discovery::{ChannelError, Role, RoleChannels};
use quarry_proto::v1::analyzer_client::AnalyzerClient;
use quarry_proto::v1::EmbedRequest;
use tonic::Code;

use crate::similarity::{EmbeddingInputs, SentenceVectors, SimilarityError};

/// How long one `Embed` call may take before the heuristic judges lexically.
pub const EMBED_TIMEOUT: Duration = Duration::from_secs(3);

/// Why no sentence embeddings were had.
#[derive(Debug, thiserror::Error)]
pub enum EmbedderError {
    #[error(transparent)]
    NoAnalyzer(#[from] ChannelError),
    #[error("the analyzer has no encoder: {0}")]
    NoEncoder(String),
    #[error("analyzer Embed failed: {0}")]
    Call(tonic::Status),
    #[error("analyzer Embed took over {EMBED_TIMEOUT:?}")]
    Timeout,
    #[error(transparent)]
    Vectors(#[from] SimilarityError),
}

/// Embeds an evaluation's sentences on a ready analyzer.
pub struct AnalyzerEmbedder {
    channels: Arc<RoleChannels>,
    max_message_bytes: usize,
    timeout: Duration,
    embedded: AtomicU64,
    fallbacks: AtomicU64,
}

impl AnalyzerEmbedder {
    pub fn new(channels: Arc<RoleChannels>, max_message_bytes: usize) -> Self {
        Self {
            channels,
            max_message_bytes,
            timeout: EMBED_TIMEOUT,
            embedded: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// Evaluations judged with embeddings.
    pub fn embedded(&self) -> u64 {
        self.embedded.load(Ordering::Relaxed)
    }

    /// Evaluations that had to be judged lexically.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// The vectors of the question, the answer and every checkable sentence, from one
    /// `Embed` call.
    pub async fn sentence_vectors(
        &self,
        question: &str,
        answer: &str,
        passages: &[&str],
    ) -> Result<SentenceVectors, EmbedderError> {
        let result = self.embed(question, answer, passages).await;
        let counter = if result.is_ok() {
            &self.embedded
        } else {
            &self.fallbacks
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn embed(
        &self,
        question: &str,
        answer: &str,
        passages: &[&str],
    ) -> Result<SentenceVectors, EmbedderError> {
        let inputs = EmbeddingInputs::new(question, answer, passages)?;
        let channel = self.channels.pick(Role::Analyzer)?;
        let mut client = AnalyzerClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        let mut request = tonic::Request::new(EmbedRequest {
            texts: inputs.texts().to_vec(),
            documents: false,
        });
        request.set_timeout(self.timeout);
        let response = tokio::time::timeout(self.timeout, client.embed(request))
            .await
            .map_err(|_| EmbedderError::Timeout)?
            .map_err(|status| match status.code() {
                Code::FailedPrecondition => EmbedderError::NoEncoder(status.message().to_string()),
                _ => EmbedderError::Call(status),
            })?
            .into_inner();
        let vectors = response
            .vectors
            .into_iter()
            .map(|vector| vector.values)
            .collect();
        Ok(inputs.attach(vectors)?)
    }
}
