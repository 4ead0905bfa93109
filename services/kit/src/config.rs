//! Layered configuration: built-in defaults < `quarry.toml` < `QUARRY_*` environment
//! variables (`__` separates sections: `QUARRY_GATEWAY__MAX_K=100`) < command-line flags.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::error::KitError;
use crate::telemetry::LogFormat;

mod answers;
mod security;
pub use answers::{CacheConfig, RerankConfig, RERANK_BACKENDS};
pub use security::{AdmissionConfig, AuthConfig, InternalTlsConfig, InternalTlsMode, TlsConfig};

/// The whole configuration of a Quarry process; each role reads its own section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct QuarryConfig {
    /// Cluster name; members of one cluster find each other under it.
    pub cluster: String,
    /// Where retrievers keep their shards.
    pub data_dir: PathBuf,
    /// Number of shards: at creation (which fixes the partitions' blocks), and under
    /// `quarry up` the count to run, resizing an existing data directory to it.
    pub shards: u32,
    /// Partitions in all, fixed at creation (a multiple of `shards`; the most shards the
    /// cluster can ever have). None: at least 16.
    pub partitions: Option<u32>,
    /// Replicas per shard under `quarry up`.
    pub replicas: u32,
    /// Address this process's gRPC server listens on (the gateway's, under `quarry up`).
    pub listen: String,
    pub log_format: LogFormat,
    /// The address other members dial, when it differs from `listen` (e.g. a pod's IP
    /// while listening on 0.0.0.0).
    pub advertise: Option<String>,
    pub discovery: DiscoveryConfig,
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub gateway: GatewayConfig,
    pub analyzer: AnalyzerConfig,
    pub retriever: RetrieverConfig,
    pub generator: GeneratorConfig,
    pub evaluator: EvaluatorConfig,
    pub scheduler: SchedulerConfig,
    /// API keys on the gateway's public API.
    pub auth: AuthConfig,
    /// TLS on the gateway's public API.
    pub tls: TlsConfig,
    /// Admission control on the gateway: concurrency per method class, default deadlines.
    pub admission: AdmissionConfig,
    /// Lets a gateway listen on a non-loopback address with neither TLS nor API keys.
    pub insecure: bool,
    /// Mutual TLS between the roles.
    pub internal_tls: InternalTlsConfig,
    /// The gateway's answer and analysis cache.
    pub cache: CacheConfig,
    /// The gateway's optional rerank stage.
    pub rerank: RerankConfig,
}

impl Default for QuarryConfig {
    fn default() -> Self {
        Self {
            cluster: "quarry".to_string(),
            data_dir: PathBuf::from("./quarry-data"),
            shards: 2,
            partitions: None,
            replicas: 1,
            listen: "127.0.0.1:7700".to_string(),
            log_format: LogFormat::Human,
            advertise: None,
            discovery: DiscoveryConfig::default(),
            server: ServerConfig::default(),
            metrics: MetricsConfig::default(),
            gateway: GatewayConfig::default(),
            analyzer: AnalyzerConfig::default(),
            retriever: RetrieverConfig::default(),
            generator: GeneratorConfig::default(),
            evaluator: EvaluatorConfig::default(),
            scheduler: SchedulerConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            admission: AdmissionConfig::default(),
            insecure: false,
            internal_tls: InternalTlsConfig::default(),
            cache: CacheConfig::default(),
            rerank: RerankConfig::default(),
        }
    }
}

/// Where members find each other.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiscoveryConfig {
    /// etcd endpoints; empty for static discovery (`quarry up`, or addresses given as flags).
    pub etcd: Vec<String>,
    /// TTL of a member's lease: a member that dies leaves the member set this long after.
    pub lease_ttl_s: i64,
    /// etcd over TLS: the CA that signed etcd's certificate (PEM); endpoints are then
    /// `https://`.
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate and key for etcd's `--client-cert-auth`.
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    /// An etcd user (etcd's `auth enable`); its password from `QUARRY_DISCOVERY__ETCD_PASSWORD`.
    pub etcd_user: Option<String>,
    pub etcd_password: Option<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            etcd: Vec::new(),
            lease_ttl_s: 10,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            etcd_user: None,
            etcd_password: None,
        }
    }
}

/// Settings every gRPC server applies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {
    /// Largest gRPC message a server accepts or sends, in bytes.
    pub max_message_bytes: usize,
    /// Upper bound on any call's duration, 0 for none (the default: a long ingest stream must
    /// not be cut; clients bound their calls with `grpc-timeout`, and every hop has its own limit).
    pub request_timeout_ms: u64,
    /// In-flight calls per connection before further calls wait.
    pub concurrency_limit_per_connection: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024 * 1024,
            request_timeout_ms: 0,
            concurrency_limit_per_connection: 256,
        }
    }
}

/// Prometheus metrics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct MetricsConfig {
    /// Address `/metrics` is served on (`--metrics-addr`, `QUARRY_METRICS__ADDR`), e.g.
    /// `0.0.0.0:9100`; none by default.
    pub addr: Option<String>,
}

/// The gateway: request limits, context building and the confidence threshold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GatewayConfig {
    /// Hits returned by `Search` when the request's k is 0.
    pub default_search_k: u32,
    /// Passages an `Ask` answers from when the request's k is 0.
    pub default_ask_k: u32,
    /// Largest k a request may ask for.
    pub max_k: u32,
    /// Longest query or question, in bytes.
    pub max_query_bytes: usize,
    /// Longest document id, in bytes.
    pub max_id_bytes: usize,
    /// Longest document text, in bytes.
    pub max_document_bytes: usize,
    /// Characters of numbered passages handed to the generator; the last one is truncated.
    pub max_context_chars: usize,
    /// Answers below this confidence carry a low-confidence notice.
    pub confidence_threshold: f32,
    /// Deadline of one shard call.
    pub shard_timeout_ms: u64,
    /// Hedge a shard call on a second replica once it outlives the shard's recent p95.
    pub hedging: bool,
    /// How a shard's replica is chosen: `adaptive` (fewest outstanding, then lowest latency
    /// EWMA) or `round_robin`.
    pub replica_selection: ReplicaSelection,
    /// Documents buffered per shard while ingesting, before they are sent on.
    pub ingest_batch: usize,
    /// How hybrid retrieval fuses the keyword and vector lists (chosen by measurement, see the README).
    pub fusion: Fusion,
    /// The k of reciprocal rank fusion.
    pub rrf_k: f64,
    /// Texts per `Embed` call while ingesting.
    pub embed_batch: usize,
    /// Full ingest batches embedded and written at once (the next batch is embedded while
    /// the last one commits); 1 writes one batch at a time.
    pub ingest_pipeline: usize,
    /// `Embed` calls of one ingest batch in flight at once, so that every analyzer worker
    /// (one per core) has work.
    pub embed_concurrency: usize,
    /// Limit of one `Embed` call while ingesting (calls queue behind each other in the analyzer).
    pub embed_timeout_ms: u64,
    /// How long one replica may take to commit one ingest batch before the batch is
    /// rejected (`UNAVAILABLE`, so the client retries it).
    pub write_timeout_ms: u64,
    /// An ingest stream that sends no document for this long is closed (DEADLINE_EXCEEDED).
    pub ingest_idle_ms: u64,
}

/// How a shard's replica is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaSelection {
    /// Fewest outstanding requests, then lowest recent latency.
    #[default]
    Adaptive,
    /// In turn, whatever their load.
    RoundRobin,
}

/// How ranked lists are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// Reciprocal rank fusion: Σ weight / (k + rank).
    Rrf,
    /// Σ weight · (score − min) / (max − min) per list. The default: on SciFact it scored
    /// nDCG@10 0.728 against RRF's 0.714 (bench/results/scifact-beir.json).
    #[default]
    Weighted,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            default_search_k: 10,
            default_ask_k: 5,
            max_k: 1000,
            max_query_bytes: 4096,
            max_id_bytes: 512,
            max_document_bytes: 1024 * 1024,
            max_context_chars: 6000,
            confidence_threshold: 0.6,
            shard_timeout_ms: 10_000,
            hedging: true,
            replica_selection: ReplicaSelection::default(),
            ingest_batch: 256,
            fusion: Fusion::default(),
            rrf_k: 60.0,
            embed_batch: 64,
            ingest_pipeline: 2,
            embed_concurrency: 4,
            embed_timeout_ms: 300_000,
            write_timeout_ms: 60_000,
            ingest_idle_ms: 30_000,
        }
    }
}

/// Which text encoder the analyzer's `Embed` uses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    /// No encoder: `Embed` answers FAILED_PRECONDITION and search is keyword-only.
    None,
    /// Feature hashing of terms; for tests only, never chosen unless configured.
    Hash,
    /// all-MiniLM-L6-v2 run in-process by ONNX Runtime from `analyzer.model_dir`
    /// (`minilm`, the name this encoder had before, is read as `onnx`).
    #[default]
    #[serde(alias = "minilm")]
    Onnx,
    /// Any OpenAI-compatible `/v1/embeddings` endpoint.
    Openai,
}

/// Which of the two graphs `make model` writes the `onnx` encoder runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncoderPrecision {
    /// model.onnx: the model's own float weights; vectors equal sentence-transformers'.
    #[default]
    Fp32,
    /// model-int8.onnx: weights quantised to int8 per channel, activations per call; about
    /// twice as fast, vectors at cosine 0.989 or more to fp32's (see the README).
    Int8,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AnalyzerConfig {
    /// How questions are analysed: `rules` (the default) or `openai` (a chat model asked
    /// for the same fields as JSON, configured under `[analyzer.chat]`, the rules as the
    /// fallback).
    pub backend: String,
    pub chat: OpenAiChatConfig,
    pub encoder: EncoderKind,
    /// Directory with tokenizer.json, model.onnx and model-int8.onnx (`make model`).
    pub model_dir: PathBuf,
    /// ONNX Runtime's shared library, opened at start (`make model` installs it).
    pub runtime_library: PathBuf,
    /// `fp32` (the default) or `int8`.
    pub precision: EncoderPrecision,
    /// Most texts embedded in one forward pass.
    pub max_batch: usize,
    /// How long a request waits for others to share its batch, in microseconds. 0 (the
    /// default) gathers only what is already queued and never waits: requests that arrive
    /// while a batch runs form the next one, and a lone request runs at once (measured
    /// better on both counts than a 200–2,000 µs window; see the README).
    pub batch_window_us: u64,
    /// Batches encoded at the same time, one per worker thread; 0 for one per CPU core.
    /// 1 by default: on the 2-core machine we measure on, one batch with both cores beat two
    /// single-threaded batches side by side (see the README's Benchmarks).
    pub batch_workers: usize,
    /// Threads one forward pass of the in-process model uses; 0 (the default) for one per
    /// CPU core.
    pub encoder_threads: usize,
    /// Whether the forward pass's idle threads spin before sleeping. Off by default: under
    /// `quarry up` the spinning takes CPU from the other roles (see the README's Benchmarks).
    pub encoder_spinning: bool,
    /// Embedding requests that may wait for a worker; one more is answered
    /// `RESOURCE_EXHAUSTED` at once.
    pub embed_queue: usize,
    /// Most analyses kept in memory; 0 turns both caches off.
    pub cache_entries: u64,
    /// Most bytes of query embeddings kept in memory (documents being ingested are never
    /// cached); 0 turns the embedding cache off.
    pub embedding_cache_bytes: u64,
    /// How long a cached analysis or embedding stays, in seconds.
    pub cache_ttl_s: u64,
    pub openai: OpenAiEmbeddingsConfig,
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        Self {
            backend: "rules".to_string(),
            chat: OpenAiChatConfig::default(),
            encoder: EncoderKind::default(),
            model_dir: PathBuf::from("models/all-MiniLM-L6-v2"),
            runtime_library: PathBuf::from("models/onnxruntime/libonnxruntime.so"),
            precision: EncoderPrecision::default(),
            max_batch: 32,
            batch_window_us: 0,
            batch_workers: 1,
            encoder_threads: 0,
            encoder_spinning: false,
            embed_queue: 512,
            cache_entries: 10_000,
            embedding_cache_bytes: 32 * 1024 * 1024,
            cache_ttl_s: 600,
            openai: OpenAiEmbeddingsConfig::default(),
        }
    }
}

/// An OpenAI-compatible embeddings endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct OpenAiEmbeddingsConfig {
    /// Base URL up to and including `/v1`, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub model: String,
    /// Name of the environment variable holding the API key (the key itself is never configured or logged).
    pub api_key_env: String,
    /// Dimensions of the vectors the model returns.
    pub dimensions: usize,
    pub timeout_ms: u64,
}

impl Default for OpenAiEmbeddingsConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8000/v1".to_string(),
            model: "all-MiniLM-L6-v2".to_string(),
            api_key_env: "OPENAI_API_KEY".to_string(),
            dimensions: 384,
            timeout_ms: 30_000,
        }
    }
}

/// One retriever shard replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RetrieverConfig {
    pub shard: u32,
    pub replica: u32,
    /// Fault injection, for tests and benchmarks only: the replica `fault.shard`/`fault.replica`
    /// delays `fault.rate` of its searches by `fault.delay_ms`.
    pub fault: FaultConfig,
    /// Memory tantivy's writer may use, in bytes.
    pub writer_memory_bytes: usize,
    /// A (re)joining replica's wait between its two catch-up passes with a peer: longer
    /// than gateways take to see it join, so no write misses it.
    pub recovery_settle_ms: u64,
}

impl Default for RetrieverConfig {
    fn default() -> Self {
        Self {
            shard: 0,
            replica: 0,
            writer_memory_bytes: 50_000_000,
            recovery_settle_ms: 1_000,
            fault: FaultConfig::default(),
        }
    }
}

/// A replica made slow on purpose (off unless `delay_ms` and `rate` are set).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct FaultConfig {
    pub shard: u32,
    pub replica: u32,
    pub delay_ms: u64,
    /// Share of requests delayed, 0 to 1.
    pub rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GeneratorConfig {
    /// `extractive` (the default, needs no model) or `openai` (any OpenAI-compatible
    /// `/v1/chat/completions`, configured under `[generator.openai]`).
    pub backend: String,
    /// Answer length budget when the request sets none.
    pub max_answer_chars: u32,
    pub openai: OpenAiChatConfig,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            backend: "extractive".to_string(),
            max_answer_chars: 700,
            openai: OpenAiChatConfig::default(),
        }
    }
}

/// Analysis backends `analyzer.backend` accepts.
pub const ANALYZER_BACKENDS: [&str; 2] = ["rules", "openai"];
/// Generator backends `generator.backend` accepts.
pub const GENERATOR_BACKENDS: [&str; 2] = ["extractive", "openai"];
/// Evaluator backends `evaluator.backend` accepts.
pub const EVALUATOR_BACKENDS: [&str; 2] = ["heuristic", "llm"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EvaluatorConfig {
    /// `heuristic` (the default, lexical) or `llm` (a judge model under `[evaluator.openai]`,
    /// falling back to `heuristic` when its reply is unusable).
    pub backend: String,
    pub openai: OpenAiChatConfig,
}

impl Default for EvaluatorConfig {
    fn default() -> Self {
        Self {
            backend: "heuristic".to_string(),
            openai: OpenAiChatConfig::default(),
        }
    }
}

/// The workflow scheduler: concurrency caps, timeouts and retry backoff.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Steps running at once, over every workflow.
    pub max_running_steps: usize,
    /// Steps of one agent role running at once.
    pub max_running_per_role: usize,
    /// Limit of one attempt when a step sets no timeout.
    pub default_step_timeout_ms: u32,
    /// Longest timeout a step may ask for.
    pub max_step_timeout_ms: u32,
    /// Most retries a step may ask for.
    pub max_retries: u32,
    /// Wait before the first retry; it doubles per retry, capped at `max_backoff_ms`.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Most steps in one workflow.
    pub max_steps: usize,
    /// Enables the `test` agent role (sleeps, fails on purpose, records its runs): for the
    /// scheduler's own tests only, never in production.
    pub test_roles: bool,
    /// API key the agents send to a gateway that requires keys (set it from the
    /// environment: `QUARRY_SCHEDULER__GATEWAY_API_KEY`); needs the `read` scope.
    pub gateway_api_key: Option<String>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_running_steps: 64,
            max_running_per_role: 16,
            default_step_timeout_ms: 600_000,
            max_step_timeout_ms: 3_600_000,
            max_retries: 10,
            backoff_ms: 500,
            max_backoff_ms: 30_000,
            max_steps: 10_000,
            test_roles: false,
            gateway_api_key: None,
        }
    }
}

/// An OpenAI-compatible chat-completions backend (vLLM, llama.cpp's server, Ollama, OpenAI).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct OpenAiChatConfig {
    /// Base URLs up to and including `/v1`, balanced round-robin; a failing one is ejected
    /// for `eject_ms`.
    pub base_urls: Vec<String>,
    pub model: String,
    /// Name of the environment variable holding the API key (the key itself is never configured or logged).
    pub api_key_env: String,
    pub temperature: f32,
    /// Most tokens the model may write per answer.
    pub max_tokens: u32,
    /// Bound on the wait for response headers, for a whole non-streamed reply, and for each
    /// gap between streamed chunks (the first token included).
    pub timeout_ms: u64,
    /// Retries after the first attempt, on 429, 5xx, connection errors and timeouts; never
    /// once a streamed token has been forwarded.
    pub max_retries: u32,
    /// First backoff; it doubles per retry (with jitter), capped at 20 times this.
    pub backoff_ms: u64,
    /// How long a base URL that failed is left out of the rotation.
    pub eject_ms: u64,
    /// Most characters of numbered passages one prompt may carry; more is INVALID_ARGUMENT.
    pub max_prompt_chars: usize,
}

impl Default for OpenAiChatConfig {
    fn default() -> Self {
        Self {
            base_urls: vec!["http://127.0.0.1:8000/v1".to_string()],
            model: "gpt-4o-mini".to_string(),
            api_key_env: "OPENAI_API_KEY".to_string(),
            temperature: 0.1,
            max_tokens: 512,
            timeout_ms: 30_000,
            max_retries: 2,
            backoff_ms: 200,
            eject_ms: 30_000,
            max_prompt_chars: 32_000,
        }
    }
}

impl OpenAiChatConfig {
    /// Checks the keys of the section named `section` (`generator.openai`, ...).
    fn validate(&self, section: &str) -> Result<(), KitError> {
        if self.base_urls.is_empty() || self.base_urls.iter().any(|url| url.trim().is_empty()) {
            return Err(KitError::Config(format!(
                "{section}.base_urls must list at least one non-empty URL"
            )));
        }
        if let Some(url) = self
            .base_urls
            .iter()
            .find(|url| !(url.starts_with("http://") || url.starts_with("https://")))
        {
            return Err(KitError::Config(format!(
                "{section}.base_urls: {url:?} must start with http:// or https://"
            )));
        }
        if self.model.trim().is_empty() {
            return Err(KitError::Config(format!(
                "{section}.model must not be empty"
            )));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(KitError::Config(format!(
                "{section}.temperature must be within 0..=2, got {}",
                self.temperature
            )));
        }
        if self.max_tokens == 0 || self.timeout_ms == 0 || self.max_prompt_chars == 0 {
            return Err(KitError::Config(format!(
                "{section}.max_tokens, {section}.timeout_ms and {section}.max_prompt_chars must be positive"
            )));
        }
        Ok(())
    }
}

impl QuarryConfig {
    /// Loads the layers in order. `config_file` defaults to `./quarry.toml` when present;
    /// `flag_overrides` is a JSON object of only the flags the user gave, shaped like the file.
    pub fn load(
        config_file: Option<&Path>,
        flag_overrides: serde_json::Value,
    ) -> Result<Self, KitError> {
        let mut figment = Figment::from(Serialized::defaults(QuarryConfig::default()));
        match config_file {
            Some(path) if !path.exists() => {
                return Err(KitError::Config(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            Some(path) => figment = figment.merge(Toml::file(path)),
            None => figment = figment.merge(Toml::file("quarry.toml")),
        }
        figment = figment
            .merge(Env::prefixed("QUARRY_").split("__"))
            .merge(Serialized::defaults(flag_overrides));
        let config: QuarryConfig = figment
            .extract()
            .map_err(|error| KitError::Config(error.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), KitError> {
        self.validate_security()?;
        self.cache.validate()?;
        self.rerank.validate()?;
        if self.shards == 0 || self.shards > 1024 {
            return Err(KitError::Config(format!(
                "shards must be within 1..=1024, got {}",
                self.shards
            )));
        }
        let threshold = self.gateway.confidence_threshold;
        if !(0.0..=1.0).contains(&threshold) {
            return Err(KitError::Config(format!(
                "gateway.confidence_threshold must be within 0..=1, got {threshold}"
            )));
        }
        if self.gateway.rrf_k.is_nan()
            || self.gateway.rrf_k <= 0.0
            || self.gateway.embed_batch == 0
            || self.gateway.embed_concurrency == 0
            || self.gateway.ingest_batch == 0
        {
            return Err(KitError::Config(
                "gateway.rrf_k, gateway.embed_batch, gateway.embed_concurrency and gateway.ingest_batch must be positive"
                    .to_string(),
            ));
        }
        if self.gateway.max_k == 0 || self.gateway.max_k > 10_000 {
            return Err(KitError::Config(
                "gateway.max_k must be within 1..=10000".to_string(),
            ));
        }
        if !GENERATOR_BACKENDS.contains(&self.generator.backend.as_str()) {
            return Err(KitError::Config(format!(
                "generator.backend {:?} is unknown (known: {})",
                self.generator.backend,
                GENERATOR_BACKENDS.join(", ")
            )));
        }
        if !EVALUATOR_BACKENDS.contains(&self.evaluator.backend.as_str()) {
            return Err(KitError::Config(format!(
                "evaluator.backend {:?} is unknown (known: {})",
                self.evaluator.backend,
                EVALUATOR_BACKENDS.join(", ")
            )));
        }
        if !ANALYZER_BACKENDS.contains(&self.analyzer.backend.as_str()) {
            return Err(KitError::Config(format!(
                "analyzer.backend {:?} is unknown (known: {})",
                self.analyzer.backend,
                ANALYZER_BACKENDS.join(", ")
            )));
        }
        if self.analyzer.backend == "openai" {
            self.analyzer.chat.validate("analyzer.chat")?;
        }
        let scheduler = &self.scheduler;
        if scheduler.max_running_steps == 0
            || scheduler.max_running_per_role == 0
            || scheduler.default_step_timeout_ms == 0
            || scheduler.max_steps == 0
        {
            return Err(KitError::Config(
                "scheduler.max_running_steps, scheduler.max_running_per_role, scheduler.default_step_timeout_ms and scheduler.max_steps must be positive"
                    .to_string(),
            ));
        }
        if scheduler.default_step_timeout_ms > scheduler.max_step_timeout_ms {
            return Err(KitError::Config(
                "scheduler.default_step_timeout_ms must not exceed scheduler.max_step_timeout_ms"
                    .to_string(),
            ));
        }
        if self.generator.backend == "openai" {
            self.generator.openai.validate("generator.openai")?;
        }
        if self.evaluator.backend == "llm" {
            self.evaluator.openai.validate("evaluator.openai")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order_file_env_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "quarry.toml",
                "cluster = \"from-file\"\n[gateway]\nmax_k = 50\ndefault_ask_k = 7\n",
            )?;
            jail.set_env("QUARRY_GATEWAY__MAX_K", "60");
            jail.set_env("QUARRY_LOG_FORMAT", "json");
            jail.set_env("QUARRY_METRICS__ADDR", "127.0.0.1:9464");
            let flags = serde_json::json!({ "gateway": { "default_ask_k": 3 } });
            let config = QuarryConfig::load(None, flags).map_err(|e| e.to_string())?;
            assert_eq!(config.cluster, "from-file");
            assert_eq!(config.gateway.max_k, 60, "env beats file");
            assert_eq!(config.gateway.default_ask_k, 3, "flags beat file");
            assert_eq!(config.log_format, LogFormat::Json);
            assert_eq!(config.metrics.addr.as_deref(), Some("127.0.0.1:9464"));
            assert_eq!(
                config.gateway.max_context_chars, 6000,
                "defaults fill the rest"
            );
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("QUARRY_GATEWAY__CONFIDENCE_THRESHOLD", "1.5");
            let error = QuarryConfig::load(None, serde_json::json!({})).unwrap_err();
            assert!(
                error.to_string().contains("confidence_threshold"),
                "{error}"
            );
            Ok(())
        });
    }

    #[test]
    fn llm_backends_are_configured_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("QUARRY_GENERATOR__BACKEND", "openai");
            jail.set_env("QUARRY_GENERATOR__OPENAI__MODEL", "llama-3");
            jail.set_env(
                "QUARRY_GENERATOR__OPENAI__BASE_URLS",
                "[\"http://a:1/v1\", \"http://b:2/v1\"]",
            );
            jail.set_env("QUARRY_EVALUATOR__BACKEND", "llm");
            let config =
                QuarryConfig::load(None, serde_json::json!({})).map_err(|e| e.to_string())?;
            assert_eq!(config.generator.backend, "openai");
            assert_eq!(config.generator.openai.model, "llama-3");
            assert_eq!(
                config.generator.openai.base_urls,
                ["http://a:1/v1", "http://b:2/v1"]
            );
            assert_eq!(config.evaluator.backend, "llm");
            jail.set_env("QUARRY_GENERATOR__BACKEND", "gpt");
            let error = QuarryConfig::load(None, serde_json::json!({})).unwrap_err();
            assert!(error.to_string().contains("generator.backend"), "{error}");
            jail.set_env("QUARRY_GENERATOR__BACKEND", "openai");
            jail.set_env("QUARRY_GENERATOR__OPENAI__BASE_URLS", "[\"ftp://x\"]");
            let error = QuarryConfig::load(None, serde_json::json!({})).unwrap_err();
            assert!(
                error.to_string().contains("generator.openai.base_urls"),
                "{error}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_named_missing_file_is_an_error() {
        let error = QuarryConfig::load(
            Some(Path::new("/nonexistent/quarry.toml")),
            serde_json::json!({}),
        )
        .unwrap_err();
        assert!(error.to_string().contains("does not exist"));
    }
}
