//! The answer and analysis cache, as in the DSPy templates Quarry grew from: an Ask's whole
//! answer is kept under (collection, the collection's write generation, normalised
//! question, k, mode, filter), and a question's analysis and embedding under (normalised
//! question, embed?). The generation changes after every acknowledged write to the
//! collection, so a cached answer never outlives the documents it was built from; an
//! analysis depends on the question alone.
//!
//! Backends: in memory (moka, bounded by bytes, with a TTL) by default; Redis when
//! `cache.redis_url` is set, so several gateways share answers (`SET key value PX ttl`,
//! bounded by Redis's own `maxmemory` policy). Every Redis call has a short timeout; a Redis
//! that is slow or gone makes the cache miss — counted (`quarry_gateway_cache_errors_total`)
//! and logged at most every few seconds — and never fails an Ask. `ConnectionManager`
//! reconnects by itself once Redis is back.
//!
//! Values are the protobuf encoding of `AskResponse` / `AnalyzeResponse`; keys are
//! `quarry:<cluster>:<kind>:<xxh3-128 hex of the key's parts>`.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;
use quarry_kit::config::CacheConfig;
use quarry_proto::v1::{AnalyzeResponse, AskResponse, Filter};
use tracing::warn;

use crate::metrics::metrics;

/// Least time between two warnings about a failing Redis.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    Answer,
    Analysis,
}

impl CacheKind {
    fn name(self) -> &'static str {
        match self {
            CacheKind::Answer => "answer",
            CacheKind::Analysis => "analysis",
        }
    }
}

/// One cached entry's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    kind: CacheKind,
    key: String,
}

enum Backend {
    Off,
    Memory(moka::future::Cache<String, Arc<Vec<u8>>>),
    Redis {
        connection: redis::aio::ConnectionManager,
        timeout: Duration,
    },
}

/// Answers and analyses, kept in memory or in Redis.
pub struct AnswerCache {
    backend: Backend,
    ttl: Duration,
    prefix: String,
    last_warning: Mutex<Option<Instant>>,
}

impl AnswerCache {
    /// No cache: every lookup misses, nothing is stored.
    pub fn off() -> Self {
        Self {
            backend: Backend::Off,
            ttl: Duration::ZERO,
            prefix: String::new(),
            last_warning: Mutex::new(None),
        }
    }

    /// The cache `config` asks for. A Redis that cannot be reached at start is not an
    /// error: the connection manager keeps trying, and until then every lookup misses.
    pub async fn from_config(config: &CacheConfig, cluster: &str) -> Result<Self, String> {
        let ttl = Duration::from_secs(config.ttl_s.max(1));
        let prefix = format!("quarry:{cluster}:");
        let backend = if !config.enabled {
            Backend::Off
        } else if let Some(url) = config.redis_url.as_deref().filter(|url| !url.is_empty()) {
            let client =
                redis::Client::open(url).map_err(|error| format!("cache.redis_url: {error}"))?;
            let timeout = Duration::from_millis(config.redis_timeout_ms.max(1));
            let manager_config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(timeout * 4)
                .set_response_timeout(timeout)
                .set_number_of_retries(1);
            let connection = tokio::time::timeout(
                timeout * 20,
                redis::aio::ConnectionManager::new_with_config(client, manager_config),
            )
            .await
            .map_err(|_| format!("cache.redis_url: no answer from {url}"))?
            .map_err(|error| format!("cache.redis_url: {error}"))?;
            Backend::Redis {
                connection,
                timeout,
            }
        } else {
            Backend::Memory(
                moka::future::Cache::builder()
                    .max_capacity(config.memory_bytes)
                    .time_to_live(ttl)
                    .weigher(|key: &String, value: &Arc<Vec<u8>>| {
                        (key.len() + value.len() + 64).min(u32::MAX as usize) as u32
                    })
                    .build(),
            )
        };
        Ok(Self {
            backend,
            ttl,
            prefix,
            last_warning: Mutex::new(None),
        })
    }

    pub fn enabled(&self) -> bool {
        !matches!(self.backend, Backend::Off)
    }

    /// The key of an answer: the collection at its current write generation, the
    /// normalised question, k, mode and filter (and how hybrid lists are fused).
    #[allow(clippy::too_many_arguments)]
    pub fn answer_key(
        &self,
        collection: &str,
        generation: u64,
        question: &str,
        k: u32,
        mode: i32,
        fusion: &str,
        filter: Option<&Filter>,
    ) -> CacheKey {
        let mut parts = Vec::with_capacity(question.len() + 64);
        for part in [
            collection.as_bytes(),
            &generation.to_le_bytes(),
            normalise(question).as_bytes(),
            &k.to_le_bytes(),
            &mode.to_le_bytes(),
            fusion.as_bytes(),
            &filter.map(Message::encode_to_vec).unwrap_or_default(),
        ] {
            parts.extend_from_slice(&(part.len() as u64).to_le_bytes());
            parts.extend_from_slice(part);
        }
        self.key(CacheKind::Answer, &parts)
    }

    /// The key of a question's analysis (with its embedding when `embed`).
    pub fn analysis_key(&self, question: &str, embed: bool) -> CacheKey {
        let mut parts = normalise(question).into_bytes();
        parts.push(u8::from(embed));
        self.key(CacheKind::Analysis, &parts)
    }

    fn key(&self, kind: CacheKind, parts: &[u8]) -> CacheKey {
        let digest = xxhash_rust::xxh3::xxh3_128(parts);
        CacheKey {
            kind,
            key: format!("{}{}:{digest:032x}", self.prefix, kind.name()),
        }
    }

    pub async fn answer(&self, key: &CacheKey) -> Option<AskResponse> {
        let bytes = self.get(key).await?;
        AskResponse::decode(bytes.as_slice()).ok()
    }

    pub async fn put_answer(&self, key: &CacheKey, answer: &AskResponse) {
        self.put(key, answer.encode_to_vec()).await;
    }

    pub async fn analysis(&self, key: &CacheKey) -> Option<AnalyzeResponse> {
        let bytes = self.get(key).await?;
        AnalyzeResponse::decode(bytes.as_slice()).ok()
    }

    pub async fn put_analysis(&self, key: &CacheKey, analysis: &AnalyzeResponse) {
        self.put(key, analysis.encode_to_vec()).await;
    }

    async fn get(&self, key: &CacheKey) -> Option<Arc<Vec<u8>>> {
        let found = match &self.backend {
            Backend::Off => return None,
            Backend::Memory(cache) => cache.get(&key.key).await,
            Backend::Redis { .. } => {
                let mut command = redis::cmd("GET");
                command.arg(&key.key);
                self.redis::<Option<Vec<u8>>>(key.kind, "get", command)
                    .await
                    .flatten()
                    .map(Arc::new)
            }
        };
        let outcome = if found.is_some() { "hit" } else { "miss" };
        metrics()
            .cache
            .with_label_values(&[key.kind.name(), outcome])
            .inc();
        found
    }

    async fn put(&self, key: &CacheKey, value: Vec<u8>) {
        match &self.backend {
            Backend::Off => {}
            Backend::Memory(cache) => cache.insert(key.key.clone(), Arc::new(value)).await,
            Backend::Redis { .. } => {
                let mut command = redis::cmd("SET");
                command
                    .arg(&key.key)
                    .arg(value)
                    .arg("PX")
                    .arg(self.ttl.as_millis() as u64);
                self.redis::<()>(key.kind, "set", command).await;
            }
        }
    }

    /// One Redis command within the timeout; `None` (counted, logged now and then) when it
    /// fails or takes too long.
    async fn redis<T: redis::FromRedisValue>(
        &self,
        kind: CacheKind,
        operation: &'static str,
        command: redis::Cmd,
    ) -> Option<T> {
        let Backend::Redis {
            connection,
            timeout,
        } = &self.backend
        else {
            return None;
        };
        let mut connection = connection.clone();
        match tokio::time::timeout(*timeout, command.query_async::<T>(&mut connection)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.failed(kind, operation, &error.to_string());
                None
            }
            Err(_) => {
                self.failed(kind, operation, "timed out");
                None
            }
        }
    }

    /// Counts a Redis failure, and warns now and then (not on every call).
    fn failed(&self, kind: CacheKind, operation: &'static str, error: &str) {
        metrics()
            .cache_errors
            .with_label_values(&[kind.name(), operation])
            .inc();
        let Ok(mut last) = self.last_warning.lock() else {
            return;
        };
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        warn!(
            operation,
            error, "the answer cache (Redis) failed; answering without it"
        );
    }
}

/// A question as the cache sees it: trimmed, lowercased, inner whitespace collapsed.
pub fn normalise(question: &str) -> String {
    question
        .split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> CacheConfig {
        CacheConfig::default()
    }

    #[test]
    fn questions_are_normalised() {
        assert_eq!(normalise("  What IS\tthe  Answer? "), "what is the answer?");
    }

    #[tokio::test]
    async fn answers_are_kept_by_collection_generation_and_parameters() {
        crate::metrics::register();
        let cache = AnswerCache::from_config(&memory(), "test").await.unwrap();
        let key = cache.answer_key("default", 7, "Why?", 5, 3, "rrf", None);
        assert_eq!(
            key,
            cache.answer_key("default", 7, "  why? ", 5, 3, "rrf", None)
        );
        let others = [
            cache.answer_key("hr", 7, "why?", 5, 3, "rrf", None),
            cache.answer_key("default", 8, "why?", 5, 3, "rrf", None),
            cache.answer_key("default", 7, "why?", 6, 3, "rrf", None),
            cache.answer_key("default", 7, "why?", 5, 1, "rrf", None),
            cache.answer_key(
                "default",
                7,
                "why?",
                5,
                3,
                "rrf",
                Some(&quarry_kit::filter::parse("team=hr").unwrap()),
            ),
        ];
        for other in &others {
            assert_ne!(&key, other);
        }
        assert!(cache.answer(&key).await.is_none());
        let answer = AskResponse {
            answer: "because".to_string(),
            ..AskResponse::default()
        };
        cache.put_answer(&key, &answer).await;
        assert_eq!(cache.answer(&key).await, Some(answer));
        assert!(cache.answer(&others[1]).await.is_none());
    }
}
