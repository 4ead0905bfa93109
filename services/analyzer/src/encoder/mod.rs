//! Text encoders behind one trait: `hash` (tests only), and the real ones.

mod hash;

pub use hash::HashEncoder;

use crate::error::AnalyzerError;

/// Turns texts into L2-normalised vectors of a fixed dimension, one per text, in order.
pub trait Encoder: Send + Sync + 'static {
    fn name(&self) -> String;
    fn dimensions(&self) -> usize;
    fn encode(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, AnalyzerError>;
}
