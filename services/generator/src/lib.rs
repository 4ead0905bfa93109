//! The generator role: writes a cited answer from numbered passages. `extractive` (the
//! default, needs no model) picks and cites the passages' best sentences; `openai` asks any
//! OpenAI-compatible chat model. The tonic `Generator` service wraps both, unary and
//! streaming.

pub mod citations;
mod error;
pub mod extractive;
pub mod openai;
mod service;

pub use error::GeneratorError;
pub use openai::OpenAiWriter;
pub use service::GeneratorService;
