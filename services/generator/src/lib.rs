//! The generator role: writes a cited answer from numbered passages. `extractive` (the
//! default, needs no model) picks and cites the passages' best sentences; the tonic
//! `Generator` service wraps it, unary and streaming.

mod error;
pub mod extractive;
mod service;

pub use error::GeneratorError;
pub use service::GeneratorService;
