//! The evaluator role: judges how grounded in the passages and how relevant to the question
//! an answer is, and how far to trust it; `heuristic` (the default) compares sentences, and
//! the tonic `Evaluator` service wraps it.

pub mod heuristic;
mod service;

pub use service::EvaluatorService;
