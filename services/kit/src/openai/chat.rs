//! `ChatClient`: one OpenAI-compatible chat-completions backend (several base URLs). A call
//! is retried on 429, 5xx, connection errors and timeouts until response headers with a
//! success status arrive; after that it never is, so a reply is never paid for twice and a
//! streamed token is never repeated. Dropping a `ChatStream` (or a call's future) drops the
//! HTTP request, which closes its connection: that is how cancellation reaches upstream.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::endpoints::EndpointPool;
use super::error::ChatError;
use super::retry::{parse_retry_after, RetryPolicy};
use super::sse::SseDecoder;
use crate::config::OpenAiChatConfig;

/// Most characters of an error body quoted in an error message.
const QUOTED_BODY_CHARS: usize = 300;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system",
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user",
            content: content.into(),
        }
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    temperature: f32,
    max_tokens: u32,
    stream: bool,
    /// Structured output: `{"type": "json_schema", "json_schema": {...}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a serde_json::Value>,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<CompletionChoice>,
}

#[derive(Deserialize)]
struct CompletionChoice {
    message: CompletionMessage,
}

#[derive(Deserialize)]
struct CompletionMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<StreamChoice>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Option<StreamDelta>,
}

#[derive(Deserialize)]
struct StreamDelta {
    #[serde(default)]
    content: Option<String>,
}

/// A failed attempt: the error, whether the server asked to wait, and whether the base URL
/// should be ejected.
struct Failure {
    error: ChatError,
    retry_after: Option<Duration>,
    eject: bool,
}

/// A chat-completions backend.
pub struct ChatClient {
    http: reqwest::Client,
    endpoints: EndpointPool,
    retry: RetryPolicy,
    model: String,
    api_key: Option<String>,
    temperature: f32,
    max_tokens: u32,
    timeout: Duration,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ChatClient")
            .field("base_urls", &self.endpoints.base_urls())
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl ChatClient {
    /// Reads the API key from the environment variable `config.api_key_env` names (no key:
    /// no `Authorization` header, as local servers expect). The key is never logged.
    pub fn new(config: &OpenAiChatConfig) -> Result<Self, ChatError> {
        let api_key = std::env::var(&config.api_key_env)
            .ok()
            .filter(|key| !key.trim().is_empty());
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|error| ChatError::Rejected(format!("http client: {error}")))?;
        if config.base_urls.is_empty() {
            return Err(ChatError::Rejected("no base URL configured".to_string()));
        }
        let endpoints =
            EndpointPool::new(&config.base_urls, Duration::from_millis(config.eject_ms));
        info!(
            base_urls = ?endpoints.base_urls(),
            model = %config.model,
            api_key_env = %config.api_key_env,
            api_key_set = api_key.is_some(),
            "openai-compatible chat backend configured"
        );
        Ok(Self {
            http,
            endpoints,
            retry: RetryPolicy::new(
                config.max_retries,
                Duration::from_millis(config.backoff_ms.max(1)),
            ),
            model: config.model.clone(),
            api_key,
            temperature: config.temperature,
            max_tokens: config.max_tokens,
            timeout,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn endpoints(&self) -> &EndpointPool {
        &self.endpoints
    }

    /// The whole reply's text (empty when the model wrote nothing).
    pub async fn complete(&self, messages: &[ChatMessage]) -> Result<String, ChatError> {
        self.complete_with(messages, None).await
    }

    /// The whole reply's text, asked to follow a JSON schema (OpenAI's structured outputs,
    /// which vLLM, llama.cpp's server and Ollama also accept). The caller still validates
    /// the reply: a server may ignore the schema.
    pub async fn complete_json(
        &self,
        messages: &[ChatMessage],
        name: &str,
        schema: &serde_json::Value,
    ) -> Result<String, ChatError> {
        let format = serde_json::json!({
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": true},
        });
        self.complete_with(messages, Some(&format)).await
    }

    async fn complete_with(
        &self,
        messages: &[ChatMessage],
        response_format: Option<&serde_json::Value>,
    ) -> Result<String, ChatError> {
        let (base_url, response) = self.establish(messages, false, response_format).await?;
        let body = tokio::time::timeout(self.timeout, response.bytes())
            .await
            .map_err(|_| ChatError::Timeout(format!("{base_url}: reply body")))?
            .map_err(|error| ChatError::Unavailable(format!("{base_url}: {error}")))?;
        let completion: Completion = serde_json::from_slice(&body).map_err(|error| {
            ChatError::Malformed(format!("{base_url}: {error}: {}", quote(&body)))
        })?;
        let first = completion
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| ChatError::Malformed(format!("{base_url}: no choices")))?;
        Ok(first.message.content.unwrap_or_default())
    }

    /// A streamed reply: retried until a success status arrives, then read token by token.
    pub async fn stream(&self, messages: &[ChatMessage]) -> Result<ChatStream, ChatError> {
        let (base_url, response) = self.establish(messages, true, None).await?;
        Ok(ChatStream {
            response,
            decoder: SseDecoder::new(),
            queued: VecDeque::new(),
            finished: false,
            timeout: self.timeout,
            base_url,
        })
    }

    /// Sends the request until some base URL answers with a success status.
    async fn establish(
        &self,
        messages: &[ChatMessage],
        stream: bool,
        response_format: Option<&serde_json::Value>,
    ) -> Result<(String, reqwest::Response), ChatError> {
        let body = ChatRequest {
            model: &self.model,
            messages,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            stream,
            response_format,
        };
        self.post("chat/completions", &body, stream).await
    }

    /// Sends `body` to `<base URL>/<path>` until some base URL answers with a success
    /// status: balanced over the base URLs, a failing one ejected for a while, retried with
    /// backoff (honouring `Retry-After`).
    async fn post<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
        stream: bool,
    ) -> Result<(String, reqwest::Response), ChatError> {
        let mut retry = 0;
        loop {
            let (index, base_url) = self
                .endpoints
                .pick()
                .ok_or_else(|| ChatError::Unavailable("no base URL configured".to_string()))?;
            let started = Instant::now();
            match self.send_once(base_url, path, body).await {
                Ok(response) => {
                    self.endpoints.restore(index);
                    debug!(
                        base_url,
                        retry,
                        stream,
                        headers_ms = started.elapsed().as_millis() as u64,
                        "model backend answered"
                    );
                    return Ok((base_url.to_string(), response));
                }
                Err(failure) => {
                    if failure.eject {
                        self.endpoints.eject(index, &failure.error.to_string());
                    }
                    if !failure.error.is_retryable() || retry >= self.retry.max_retries {
                        return Err(failure.error);
                    }
                    retry += 1;
                    let Some(delay) = self.retry.delay(retry, failure.retry_after) else {
                        warn!(base_url, error = %failure.error, "model backend asked for a wait over the limit, giving up");
                        return Err(failure.error);
                    };
                    warn!(
                        base_url,
                        retry,
                        delay_ms = delay.as_millis() as u64,
                        error = %failure.error,
                        "model call failed, retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The order of `documents` by relevance to `query`, from a `/v1/rerank` server (TEI,
    /// vLLM, Jina and Cohere-compatible ones): `(index into documents, relevance_score)`,
    /// best first, at most `top_n`. Same balancing, retries and timeouts as a completion.
    pub async fn rerank(
        &self,
        query: &str,
        documents: &[String],
        top_n: usize,
    ) -> Result<Vec<(usize, f64)>, ChatError> {
        let body = serde_json::json!({
            "model": self.model,
            "query": query,
            "documents": documents,
            "top_n": top_n,
        });
        let (base_url, response) = self.post("rerank", &body, false).await?;
        let bytes = tokio::time::timeout(self.timeout, response.bytes())
            .await
            .map_err(|_| ChatError::Timeout(format!("{base_url}: reply body")))?
            .map_err(|error| ChatError::Unavailable(format!("{base_url}: {error}")))?;
        let reply: RerankReply = serde_json::from_slice(&bytes).map_err(|error| {
            ChatError::Malformed(format!("{base_url}: {error}: {}", quote(&bytes)))
        })?;
        let mut ranked = Vec::with_capacity(reply.results.len());
        for result in reply.results {
            if result.index >= documents.len() || !result.relevance_score.is_finite() {
                return Err(ChatError::Malformed(format!(
                    "{base_url}: result index {} of {} documents, score {}",
                    result.index,
                    documents.len(),
                    result.relevance_score
                )));
            }
            ranked.push((result.index, result.relevance_score));
        }
        ranked.sort_by(|left, right| right.1.total_cmp(&left.1).then(left.0.cmp(&right.0)));
        ranked.truncate(top_n);
        Ok(ranked)
    }

    async fn send_once<B: serde::Serialize>(
        &self,
        base_url: &str,
        path: &str,
        body: &B,
    ) -> Result<reqwest::Response, Failure> {
        let endpoint = format!("{base_url}/{path}");
        let mut request = self.http.post(&endpoint).json(body);
        if let Some(api_key) = &self.api_key {
            request = request.bearer_auth(api_key);
        }
        let sent = tokio::time::timeout(self.timeout, request.send()).await;
        let response = match sent {
            Err(_) => {
                return Err(Failure {
                    error: ChatError::Timeout(format!(
                        "{endpoint}: no response within {} ms",
                        self.timeout.as_millis()
                    )),
                    retry_after: None,
                    eject: true,
                })
            }
            Ok(Err(error)) => {
                return Err(Failure {
                    error: ChatError::Unavailable(format!("{endpoint}: {error}")),
                    retry_after: None,
                    eject: true,
                })
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = parse_retry_after(
            response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok()),
        );
        let body = tokio::time::timeout(self.timeout, response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let message = format!("{endpoint} answered {status}: {}", quote(&body));
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Failure {
                error: ChatError::Unavailable(message),
                retry_after,
                eject: false,
            });
        }
        if status.is_server_error() {
            return Err(Failure {
                error: ChatError::Unavailable(message),
                retry_after,
                eject: true,
            });
        }
        Err(Failure {
            error: ChatError::Rejected(message),
            retry_after: None,
            eject: false,
        })
    }
}

/// A `/v1/rerank` reply (Cohere's shape, which TEI, vLLM and Jina also answer).
#[derive(serde::Deserialize)]
struct RerankReply {
    results: Vec<RerankResult>,
}

#[derive(serde::Deserialize)]
struct RerankResult {
    index: usize,
    relevance_score: f64,
}

fn quote(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(QUOTED_BODY_CHARS)
        .collect()
}

/// A reply being streamed. Dropping it closes the upstream connection.
pub struct ChatStream {
    response: reqwest::Response,
    decoder: SseDecoder,
    queued: VecDeque<String>,
    finished: bool,
    timeout: Duration,
    base_url: String,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ChatStream")
            .field("base_url", &self.base_url)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl ChatStream {
    /// The next non-empty piece of text, or `None` after `data: [DONE]`. Each wait for more
    /// bytes is bounded by the timeout; a body that ends before `[DONE]` is an error.
    pub async fn next_token(&mut self) -> Result<Option<String>, ChatError> {
        loop {
            if let Some(token) = self.queued.pop_front() {
                return Ok(Some(token));
            }
            if self.finished {
                return Ok(None);
            }
            let read = tokio::time::timeout(self.timeout, self.response.chunk()).await;
            let bytes = match read {
                Err(_) => {
                    return Err(ChatError::Timeout(format!(
                        "{}: no streamed chunk within {} ms",
                        self.base_url,
                        self.timeout.as_millis()
                    )))
                }
                Ok(Err(error)) => {
                    return Err(ChatError::StreamBroken(format!(
                        "{}: {error}",
                        self.base_url
                    )))
                }
                Ok(Ok(None)) => {
                    return Err(ChatError::StreamBroken(format!(
                        "{}: the stream ended before data: [DONE]",
                        self.base_url
                    )))
                }
                Ok(Ok(Some(bytes))) => bytes,
            };
            let events = self
                .decoder
                .feed(&bytes)
                .map_err(|reason| ChatError::Malformed(format!("{}: {reason}", self.base_url)))?;
            for event in events {
                if event.is_done() {
                    self.finished = true;
                    break;
                }
                self.queue_tokens(&event.data)?;
            }
        }
    }

    fn queue_tokens(&mut self, data: &str) -> Result<(), ChatError> {
        let value: Value = serde_json::from_str(data).map_err(|error| {
            ChatError::Malformed(format!("{}: stream chunk: {error}", self.base_url))
        })?;
        if let Some(error) = value.get("error") {
            return Err(ChatError::StreamBroken(format!(
                "{}: the model reported {error}",
                self.base_url
            )));
        }
        let chunk: StreamChunk = serde_json::from_value(value).map_err(|error| {
            ChatError::Malformed(format!("{}: stream chunk: {error}", self.base_url))
        })?;
        let tokens = chunk
            .choices
            .into_iter()
            .filter_map(|choice| choice.delta.and_then(|delta| delta.content))
            .filter(|token| !token.is_empty());
        self.queued.extend(tokens);
        Ok(())
    }
}
