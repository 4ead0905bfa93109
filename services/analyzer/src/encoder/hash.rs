//! `HashEncoder`: dependency-free feature hashing of terms, for tests only; it is used only
//! when `analyzer.encoder = "hash"` is configured.

use quarry_kit::text::content_terms;
use xxhash_rust::xxh3::xxh3_64;

use super::Encoder;
use crate::error::AnalyzerError;

/// Signed feature hashing of content terms into `dimensions` buckets.
#[derive(Debug, Clone)]
pub struct HashEncoder {
    dimensions: usize,
}

impl HashEncoder {
    pub fn new(dimensions: usize) -> Self {
        Self {
            dimensions: dimensions.max(1),
        }
    }

    fn encode_one(&self, text: &str) -> Vec<f32> {
        let mut vector = vec![0.0f32; self.dimensions];
        for term in content_terms(text) {
            let hash = xxh3_64(term.as_bytes());
            let bucket = (hash % self.dimensions as u64) as usize;
            let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
            vector[bucket] += sign;
        }
        let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
        if norm > 0.0 {
            vector.iter_mut().for_each(|value| *value /= norm);
        }
        vector
    }
}

impl Encoder for HashEncoder {
    fn name(&self) -> String {
        format!("hash-{}", self.dimensions)
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn encode(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, AnalyzerError> {
        Ok(texts.iter().map(|text| self.encode_one(text)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(left: &[f32], right: &[f32]) -> f32 {
        left.iter().zip(right).map(|(a, b)| a * b).sum()
    }

    #[test]
    fn similar_texts_are_closer_than_unrelated_ones() {
        let encoder = HashEncoder::new(384);
        let vectors = encoder
            .encode(&[
                "insulin lowers blood glucose".to_string(),
                "blood glucose is lowered by insulin".to_string(),
                "the river flooded the village".to_string(),
            ])
            .unwrap();
        assert_eq!(vectors[0].len(), 384);
        assert!((cosine(&vectors[0], &vectors[0]) - 1.0).abs() < 1e-5);
        assert!(cosine(&vectors[0], &vectors[1]) > cosine(&vectors[0], &vectors[2]) + 0.3);
    }
}
