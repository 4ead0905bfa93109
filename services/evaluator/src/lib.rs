//! The evaluator role: judges how grounded in the passages and how relevant to the question
//! an answer is, and how far to trust it; `heuristic` (the default) compares sentences,
//! `llm` asks a judge model (falling back to the heuristic), and the tonic `Evaluator`
//! service wraps them.

pub mod heuristic;
pub mod llm;
mod service;

pub use llm::LlmJudge;
pub use service::EvaluatorService;
