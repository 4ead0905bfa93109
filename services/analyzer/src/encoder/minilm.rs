//! `MiniLmEncoder`: all-MiniLM-L6-v2 run in-process with candle on the CPU: tokenizer, BERT
//! forward (`bert`), mean pooling over the attention mask, L2 normalisation — what
//! sentence-transformers does.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use tokenizers::{Encoding, Tokenizer, TruncationParams};
use tracing::debug;

use super::bert::{BertConfig, BertEncoder};
use super::Encoder;
use crate::error::AnalyzerError;

/// The model's name, as sentence-transformers calls it.
pub const MINILM_NAME: &str = "all-MiniLM-L6-v2";
/// Width of the model's vectors.
pub const MINILM_DIMENSIONS: usize = 384;
/// sentence-transformers' `max_seq_length` for this model, special tokens included; the
/// shipped tokenizer.json says 128, which is not what the reference implementation uses.
const MAX_SEQUENCE_TOKENS: usize = 256;
/// Texts per forward pass. Texts are sorted by length first, so each pass pads little.
const TEXTS_PER_FORWARD: usize = 16;

const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
const WEIGHTS_FILE: &str = "model.safetensors";

/// all-MiniLM-L6-v2 loaded from a model directory (`make model` installs one).
pub struct MiniLmEncoder {
    model: BertEncoder,
    tokenizer: Tokenizer,
    pad_token_id: u32,
    device: Device,
}

impl std::fmt::Debug for MiniLmEncoder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MiniLmEncoder")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl MiniLmEncoder {
    /// Loads config.json, tokenizer.json and model.safetensors from `model_dir`.
    pub fn load(model_dir: &Path) -> Result<Self, AnalyzerError> {
        for file in [CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE] {
            if !model_dir.join(file).is_file() {
                return Err(AnalyzerError::EncoderLoad(format!(
                    "{} has no {file}; run `make model` to install {MINILM_NAME} there",
                    model_dir.display()
                )));
            }
        }
        let started = Instant::now();
        let config = read_config(&model_dir.join(CONFIG_FILE))?;
        let tokenizer = read_tokenizer(&model_dir.join(TOKENIZER_FILE))?;
        let device = Device::Cpu;
        let weights_path = model_dir.join(WEIGHTS_FILE);
        let weights = std::fs::read(&weights_path).map_err(|error| {
            AnalyzerError::EncoderLoad(format!("{}: {error}", weights_path.display()))
        })?;
        let model = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .and_then(|variables| BertEncoder::load(variables, &config))
            .map_err(|error| {
                AnalyzerError::EncoderLoad(format!("{}: {error}", weights_path.display()))
            })?;
        if config.hidden_size != MINILM_DIMENSIONS {
            return Err(AnalyzerError::EncoderLoad(format!(
                "{}: hidden_size {} is not {MINILM_DIMENSIONS}; is this {MINILM_NAME}?",
                model_dir.display(),
                config.hidden_size
            )));
        }
        debug!(
            model_dir = %model_dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "minilm encoder loaded"
        );
        Ok(Self {
            model,
            tokenizer,
            pad_token_id: config.pad_token_id,
            device,
        })
    }

    /// Runs one forward pass over `encodings`, padded to the longest of them, and returns
    /// one normalised vector per encoding, in order.
    fn encode_padded(&self, encodings: &[&Encoding]) -> candle_core::Result<Vec<Vec<f32>>> {
        let longest = encodings
            .iter()
            .map(|encoding| encoding.len())
            .max()
            .unwrap_or(0);
        let rows = encodings.len();
        let mut token_ids = Vec::with_capacity(rows * longest);
        let mut attention = Vec::with_capacity(rows * longest);
        for encoding in encodings {
            let padding = longest - encoding.len();
            token_ids.extend_from_slice(encoding.get_ids());
            token_ids.extend(std::iter::repeat_n(self.pad_token_id, padding));
            attention.extend_from_slice(encoding.get_attention_mask());
            attention.extend(std::iter::repeat_n(0u32, padding));
        }
        let token_ids = Tensor::from_vec(token_ids, (rows, longest), &self.device)?;
        let attention = Tensor::from_vec(attention, (rows, longest), &self.device)?;
        let hidden = self.model.forward(&token_ids, &attention)?;
        mean_pool_normalised(&hidden, &attention)?.to_vec2::<f32>()
    }
}

/// Mean of the token vectors the attention mask keeps, then L2 normalisation, with
/// sentence-transformers' guards (token count at least 1e-9, norm at least 1e-12).
fn mean_pool_normalised(hidden: &Tensor, attention: &Tensor) -> candle_core::Result<Tensor> {
    let mask = attention.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.maximum(1e-9)?;
    let mean = summed.broadcast_div(&counts)?;
    let norms = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    mean.broadcast_div(&norms)
}

fn read_config(path: &Path) -> Result<BertConfig, AnalyzerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| AnalyzerError::EncoderLoad(format!("{}: {error}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|error| AnalyzerError::EncoderLoad(format!("{}: {error}", path.display())))
}

/// The model's tokenizer with its fixed padding to 128 removed and truncation at
/// sentence-transformers' 256 tokens; batches are padded to their longest member instead.
fn read_tokenizer(path: &Path) -> Result<Tokenizer, AnalyzerError> {
    let load_error = |error: tokenizers::Error| {
        AnalyzerError::EncoderLoad(format!("{}: {error}", path.display()))
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(load_error)?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: MAX_SEQUENCE_TOKENS,
            ..TruncationParams::default()
        }))
        .map_err(load_error)?;
    Ok(tokenizer)
}

impl Encoder for MiniLmEncoder {
    fn name(&self) -> String {
        MINILM_NAME.to_string()
    }

    fn dimensions(&self) -> usize {
        MINILM_DIMENSIONS
    }

    fn encode(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, AnalyzerError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs, true)
            .map_err(|error| AnalyzerError::Encoder(format!("tokenizer: {error}")))?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&index| std::cmp::Reverse(encodings[index].len()));
        let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(TEXTS_PER_FORWARD) {
            let chunk_encodings: Vec<&Encoding> =
                chunk.iter().map(|&index| &encodings[index]).collect();
            let chunk_vectors = self
                .encode_padded(&chunk_encodings)
                .map_err(|error| AnalyzerError::Encoder(format!("minilm forward: {error}")))?;
            for (&index, vector) in chunk.iter().zip(chunk_vectors) {
                vectors[index] = vector;
            }
        }
        debug!(
            texts = texts.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "minilm encoded"
        );
        Ok(vectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_directory_names_the_file_and_make_model() {
        let directory = tempfile::tempdir().unwrap();
        let error = MiniLmEncoder::load(directory.path()).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("config.json"), "{message}");
        assert!(message.contains("run `make model`"), "{message}");
        assert!(
            message.contains(&directory.path().display().to_string()),
            "{message}"
        );
    }
}
