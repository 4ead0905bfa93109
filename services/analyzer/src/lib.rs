//! The analyzer role: what kind of question this is (type, intent, entities, complexity,
//! confidence) from documented rules or a chat model, and text embeddings from the configured encoder;
//! plus the tonic `Analyzer` service that wraps both.

mod analyzer;
mod cache;
mod encoder;
mod error;
mod llm;
pub mod metrics;
pub mod query_head;
pub mod rules;
mod service;

pub use analyzer::QuestionAnalyzer;
pub use cache::{AnalyzerCaches, CacheCounts, CacheOptions};
pub use encoder::{
    BatchOptions, BatchStats, EmbedBatcher, Encoder, HashEncoder, OnnxEncoder, OnnxOptions,
    OpenAiEncoder, MINILM_DIMENSIONS, MINILM_NAME,
};
pub use error::AnalyzerError;
pub use llm::{LlmAnalyzer, LlmAnalyzerStats};
pub use service::AnalyzerService;
