//! The gateway's answer cache (`[cache]`) and optional rerank stage (`[rerank]`).

use serde::{Deserialize, Serialize};

use super::OpenAiChatConfig;
use crate::error::KitError;

/// Answers and analyses cached by the gateway (see `gateway/src/answer_cache.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Bytes of answers and analyses kept in memory (without Redis).
    pub memory_bytes: u64,
    /// How long an entry stays, in seconds (a write to its collection retires an answer
    /// sooner).
    pub ttl_s: u64,
    /// `redis://host:port/db`: keep the cache in Redis, shared by every gateway.
    pub redis_url: Option<String>,
    /// Longest wait for Redis per call; past it the cache misses.
    pub redis_timeout_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            memory_bytes: 64 * 1024 * 1024,
            ttl_s: 3600,
            redis_url: None,
            redis_timeout_ms: 50,
        }
    }
}

/// Backends of the rerank stage.
pub const RERANK_BACKENDS: [&str; 3] = ["off", "endpoint", "chat"];

/// Reordering the fused candidates before the context is built.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RerankConfig {
    /// `off` (the default), `endpoint` (a `/v1/rerank` server: TEI, vLLM, Jina, Cohere-
    /// compatible) or `chat` (a chat model ranks numbered passages).
    pub backend: String,
    /// The rerank server: `base_urls` (each ending in `/v1`), `model`, timeouts, retries,
    /// as for the generator.
    pub endpoint: OpenAiChatConfig,
    /// The chat model that ranks passages, as `generator.openai`.
    pub chat: OpenAiChatConfig,
    /// How many fused candidates are reranked (at least k): reranking pays only when there
    /// are more candidates than passages kept.
    pub candidates: u32,
    /// Also rerank `Search` (by default only `Ask`, whose passages an answer is written from).
    pub search: bool,
}

impl Default for RerankConfig {
    fn default() -> Self {
        Self {
            backend: "off".to_string(),
            endpoint: OpenAiChatConfig {
                model: "bge-reranker-base".to_string(),
                max_tokens: 1,
                ..OpenAiChatConfig::default()
            },
            chat: OpenAiChatConfig::default(),
            candidates: 20,
            search: false,
        }
    }
}

impl CacheConfig {
    pub(super) fn validate(&self) -> Result<(), KitError> {
        if self.enabled && self.ttl_s == 0 {
            return Err(KitError::Config("cache.ttl_s must be positive".to_string()));
        }
        if let Some(url) = &self.redis_url {
            if !url.is_empty() && !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(KitError::Config(format!(
                    "cache.redis_url: {url:?} must start with redis:// or rediss://"
                )));
            }
        }
        Ok(())
    }
}

impl RerankConfig {
    pub(super) fn validate(&self) -> Result<(), KitError> {
        if !RERANK_BACKENDS.contains(&self.backend.as_str()) {
            return Err(KitError::Config(format!(
                "rerank.backend must be one of {RERANK_BACKENDS:?}, got {:?}",
                self.backend
            )));
        }
        if self.candidates == 0 || self.candidates > 1000 {
            return Err(KitError::Config(
                "rerank.candidates must be within 1..=1000".to_string(),
            ));
        }
        match self.backend.as_str() {
            "endpoint" => self.endpoint.validate("rerank.endpoint"),
            "chat" => self.chat.validate("rerank.chat"),
            _ => Ok(()),
        }
    }
}
