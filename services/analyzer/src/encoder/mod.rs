//! Text encoders behind one trait: `hash` (tests only), MiniLM in-process on ONNX Runtime,
//! any OpenAI-compatible endpoint; and `EmbedBatcher`, which shares one encoder among callers.

mod batcher;
mod hash;
mod onnx;
mod openai;

pub use batcher::{BatchOptions, BatchStats, EmbedBatcher};
pub use hash::HashEncoder;
pub use onnx::{OnnxEncoder, OnnxOptions, MINILM_DIMENSIONS, MINILM_NAME};
pub use openai::OpenAiEncoder;

use crate::error::AnalyzerError;

/// Turns texts into L2-normalised vectors of a fixed dimension, one per text, in order.
pub trait Encoder: Send + Sync + 'static {
    fn name(&self) -> String;
    fn dimensions(&self) -> usize;
    fn encode(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, AnalyzerError>;
}
