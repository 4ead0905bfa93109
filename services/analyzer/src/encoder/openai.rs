//! `OpenAiEncoder`: embeddings from any OpenAI-compatible `POST {base_url}/embeddings`
//! endpoint, ordered by `index`, checked for width and L2-normalised.

use std::time::{Duration, Instant};

use quarry_kit::config::OpenAiEmbeddingsConfig;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tracing::{debug, info};

use super::Encoder;
use crate::error::AnalyzerError;

/// Most texts sent in one request (OpenAI accepts up to 2048 inputs).
const MAX_INPUTS_PER_REQUEST: usize = 256;
/// Most characters of an error body quoted in an error message.
const QUOTED_BODY_CHARS: usize = 300;

#[derive(Serialize)]
struct EmbeddingsRequest<'a> {
    model: &'a str,
    input: &'a [String],
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
    index: usize,
}

/// A remote embeddings model. `encode` blocks: it runs the request on the encoder's own
/// small runtime, so it must be called from a blocking thread (as `EmbedBatcher` does).
pub struct OpenAiEncoder {
    client: reqwest::Client,
    runtime: Option<Runtime>,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    dimensions: usize,
}

impl std::fmt::Debug for OpenAiEncoder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OpenAiEncoder")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

impl OpenAiEncoder {
    /// Reads the API key from the environment variable `config.api_key_env` names (no key:
    /// no `Authorization` header, as local servers expect).
    pub fn new(config: &OpenAiEmbeddingsConfig) -> Result<Self, AnalyzerError> {
        let api_key = std::env::var(&config.api_key_env)
            .ok()
            .filter(|key| !key.trim().is_empty());
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|error| AnalyzerError::EncoderLoad(format!("http client: {error}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("quarry-openai-embed")
            .enable_all()
            .build()
            .map_err(|error| AnalyzerError::EncoderLoad(format!("http runtime: {error}")))?;
        let endpoint = format!("{}/embeddings", config.base_url.trim_end_matches('/'));
        info!(
            endpoint = %endpoint,
            model = %config.model,
            api_key_env = %config.api_key_env,
            api_key_set = api_key.is_some(),
            "openai-compatible encoder configured"
        );
        Ok(Self {
            client,
            runtime: Some(runtime),
            endpoint,
            model: config.model.clone(),
            api_key,
            dimensions: config.dimensions,
        })
    }

    async fn request(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, AnalyzerError> {
        let mut request = self.client.post(&self.endpoint).json(&EmbeddingsRequest {
            model: &self.model,
            input: texts,
        });
        if let Some(api_key) = &self.api_key {
            request = request.bearer_auth(api_key);
        }
        let response = request.send().await.map_err(|error| {
            AnalyzerError::EncoderUnavailable(format!("{}: {error}", self.endpoint))
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let quoted: String = body.chars().take(QUOTED_BODY_CHARS).collect();
            let message = format!("{} answered {status}: {quoted}", self.endpoint);
            return Err(
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    AnalyzerError::EncoderUnavailable(message)
                } else {
                    AnalyzerError::Encoder(message)
                },
            );
        }
        let parsed: EmbeddingsResponse = response.json().await.map_err(|error| {
            AnalyzerError::Encoder(format!("{}: unreadable answer: {error}", self.endpoint))
        })?;
        self.ordered_normalised(parsed, texts.len())
    }

    /// The vectors in input order (by `index`), each checked for width and normalised.
    fn ordered_normalised(
        &self,
        response: EmbeddingsResponse,
        expected: usize,
    ) -> Result<Vec<Vec<f32>>, AnalyzerError> {
        if response.data.len() != expected {
            return Err(AnalyzerError::Encoder(format!(
                "{}: {} embeddings for {expected} inputs",
                self.endpoint,
                response.data.len()
            )));
        }
        let mut slots: Vec<Option<Vec<f32>>> = vec![None; expected];
        for item in response.data {
            if item.embedding.len() != self.dimensions {
                return Err(AnalyzerError::Encoder(format!(
                    "{}: expected {} dimensions, got {}",
                    self.endpoint,
                    self.dimensions,
                    item.embedding.len()
                )));
            }
            match slots.get_mut(item.index) {
                Some(slot @ None) => *slot = Some(normalised(item.embedding)),
                _ => {
                    return Err(AnalyzerError::Encoder(format!(
                        "{}: index {} is out of range or repeated",
                        self.endpoint, item.index
                    )))
                }
            }
        }
        // Every slot is filled: as many items as slots, and none repeated or out of range.
        Ok(slots.into_iter().flatten().collect())
    }
}

fn normalised(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|value| *value /= norm);
    }
    vector
}

impl Drop for OpenAiEncoder {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code; this does not block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Encoder for OpenAiEncoder {
    fn name(&self) -> String {
        self.model.clone()
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn encode(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, AnalyzerError> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| AnalyzerError::Encoder("the encoder is shut down".to_string()))?;
        let started = Instant::now();
        let mut vectors = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(MAX_INPUTS_PER_REQUEST) {
            vectors.extend(runtime.block_on(self.request(chunk))?);
        }
        debug!(
            texts = texts.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "openai-compatible encoder answered"
        );
        Ok(vectors)
    }
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;
