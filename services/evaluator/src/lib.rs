//! The evaluator role: judges how grounded in the passages and how relevant to the question
//! an answer is, and how far to trust it; `heuristic` (the default) compares sentences,
//! lexically and, when an analyzer with an encoder is reachable, by embedding similarity;
//! `llm` asks a judge model (falling back to the heuristic); the tonic `Evaluator` service
//! wraps them.

pub mod embedder;
pub mod heuristic;
pub mod llm;
mod service;
pub mod similarity;

pub use embedder::AnalyzerEmbedder;
pub use llm::LlmJudge;
pub use service::{EvaluatorService, HEURISTIC_EMBEDDINGS, HEURISTIC_LEXICAL};
