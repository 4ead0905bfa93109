//! `OnnxEncoder`: all-MiniLM-L6-v2 run in-process by ONNX Runtime on the CPU: tokenizer,
//! the fused BERT graph `make model` writes (`scripts/export_minilm_onnx.py`), masked mean
//! pooling and L2 normalisation — what sentence-transformers does.
//!
//! ONNX Runtime is a native library opened at run time (`ort`'s `load-dynamic`), so the build
//! downloads nothing; `make model` installs the library from PyPI's onnxruntime wheel next to
//! the model. A missing or too-old library is an `EncoderLoad` error naming what to run.
//!
//! A text's vector does not depend on the batch it is encoded in, bit for bit: in fp32 every
//! kernel of the graph computes one sequence's rows without reading another's, and the
//! padding a batch adds is masked out of attention and pooling (the `batch_invariance` test
//! proves it for this graph and this library). The int8 graph quantises activations with one
//! scale per tensor — a scale that a batch's other texts would change — so in int8 each text
//! runs on its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;
use quarry_kit::config::EncoderPrecision;
use tokenizers::{Encoding, Tokenizer, TruncationParams};
use tracing::debug;

use super::Encoder;
use crate::error::AnalyzerError;

/// The model's name, as sentence-transformers calls it.
pub const MINILM_NAME: &str = "all-MiniLM-L6-v2";
/// Width of the model's vectors.
pub const MINILM_DIMENSIONS: usize = 384;
/// sentence-transformers' `max_seq_length` for this model, special tokens included; the
/// shipped tokenizer.json says 128, which is not what the reference implementation uses.
const MAX_SEQUENCE_TOKENS: usize = 256;
/// Texts per forward pass in fp32. Texts are sorted by length first, so each pass pads little.
const TEXTS_PER_FORWARD: usize = 16;

/// Padding (in tokens) a text may be given before it goes into a pass of its own.
const SPLIT_PADDING_TOKENS: usize = 32;

const TOKENIZER_FILE: &str = "tokenizer.json";
const FP32_GRAPH_FILE: &str = "model.onnx";
const INT8_GRAPH_FILE: &str = "model-int8.onnx";
const OUTPUT_NAME: &str = "last_hidden_state";

/// How to load and run the encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxOptions {
    /// Directory with tokenizer.json, model.onnx and model-int8.onnx (`make model`).
    pub model_dir: PathBuf,
    /// ONNX Runtime's shared library (`make model` installs it in models/onnxruntime/).
    pub runtime_library: PathBuf,
    pub precision: EncoderPrecision,
    /// Threads one forward pass uses; 0 for one per core.
    pub threads: usize,
    /// Forward passes that may run at once (one ONNX Runtime session each).
    pub sessions: usize,
    /// Whether idle intra-op threads spin before sleeping: a little faster alone, but it
    /// takes CPU from the other roles that share the machine under `quarry up`.
    pub spinning: bool,
}

impl OnnxOptions {
    /// Defaults for `model_dir`: fp32, every core, one session, no spinning.
    pub fn new(model_dir: impl Into<PathBuf>, runtime_library: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            runtime_library: runtime_library.into(),
            precision: EncoderPrecision::Fp32,
            threads: 0,
            sessions: 1,
            spinning: false,
        }
    }
}

/// all-MiniLM-L6-v2 on ONNX Runtime.
pub struct OnnxEncoder {
    sessions: Vec<Mutex<Session>>,
    next_session: AtomicUsize,
    tokenizer: Tokenizer,
    precision: EncoderPrecision,
}

impl std::fmt::Debug for OnnxEncoder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OnnxEncoder")
            .field("precision", &self.precision)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// The process's one ONNX Runtime environment, from the first library that loaded (ONNX
/// Runtime allows one per process). A failed load is not kept: a later load may succeed.
static RUNTIME: OnceLock<ort::environment::Environment> = OnceLock::new();
static RUNTIME_LOADING: Mutex<()> = Mutex::new(());

/// Opens ONNX Runtime's library at `library` once per process and checks its version.
fn runtime(library: &Path) -> Result<&'static ort::environment::Environment, AnalyzerError> {
    if let Some(environment) = RUNTIME.get() {
        return Ok(environment);
    }
    let _loading = RUNTIME_LOADING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(environment) = RUNTIME.get() {
        return Ok(environment);
    }
    if !library.exists() {
        return Err(AnalyzerError::EncoderLoad(format!(
            "no ONNX Runtime library at {}; run `make model` to install it, or set \
             analyzer.runtime_library (QUARRY_ANALYZER__RUNTIME_LIBRARY)",
            library.display()
        )));
    }
    let builder = ort::init_from(library).map_err(|error| {
        AnalyzerError::EncoderLoad(match error {
            ort::LoadDynamicError::BadVersion { .. } => format!(
                "{error}; Quarry needs ONNX Runtime 1.{} or newer: run `make model` to \
                 install the pinned version",
                ort::MINOR_VERSION
            ),
            other => format!("{other}; is it ONNX Runtime? run `make model` to install it"),
        })
    })?;
    let environment = builder
        .with_name("quarry")
        .with_telemetry(false)
        .build()
        .map_err(|error| {
            AnalyzerError::EncoderLoad(format!("cannot start ONNX Runtime: {error}"))
        })?;
    Ok(RUNTIME.get_or_init(|| environment))
}

impl OnnxEncoder {
    /// Loads the tokenizer and the graph of `options.precision` from `options.model_dir`.
    pub fn load(options: &OnnxOptions) -> Result<Self, AnalyzerError> {
        let graph_file = match options.precision {
            EncoderPrecision::Fp32 => FP32_GRAPH_FILE,
            EncoderPrecision::Int8 => INT8_GRAPH_FILE,
        };
        for file in [TOKENIZER_FILE, graph_file] {
            if !options.model_dir.join(file).is_file() {
                return Err(AnalyzerError::EncoderLoad(format!(
                    "{} has no {file}; run `make model` to install {MINILM_NAME} there",
                    options.model_dir.display()
                )));
            }
        }
        let environment = runtime(&options.runtime_library)?;
        let started = Instant::now();
        let tokenizer = read_tokenizer(&options.model_dir.join(TOKENIZER_FILE))?;
        let graph_path = options.model_dir.join(graph_file);
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            threads => threads,
        };
        let session_error = |error: ort::Error| {
            AnalyzerError::EncoderLoad(format!("{}: {error}", graph_path.display()))
        };
        let sessions = (0..options.sessions.max(1))
            .map(|_| {
                let mut builder = Session::builder(environment)
                    .and_then(|builder| {
                        Ok(builder
                            .with_optimization_level(GraphOptimizationLevel::All)?
                            .with_intra_threads(threads)?
                            .with_inter_threads(1)?
                            .with_intra_op_spinning(options.spinning)?)
                    })
                    .map_err(session_error)?;
                builder
                    .commit_from_file(&graph_path)
                    .map(Mutex::new)
                    .map_err(session_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output_ok = sessions[0]
            .lock()
            .map(|session| {
                session
                    .outputs()
                    .iter()
                    .any(|output| output.name() == OUTPUT_NAME)
            })
            .unwrap_or(false);
        if !output_ok {
            return Err(AnalyzerError::EncoderLoad(format!(
                "{} has no output {OUTPUT_NAME}; write it again with `make model`",
                graph_path.display()
            )));
        }
        debug!(
            graph = %graph_path.display(),
            threads,
            sessions = sessions.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "onnx encoder loaded"
        );
        Ok(Self {
            sessions,
            next_session: AtomicUsize::new(0),
            tokenizer,
            precision: options.precision,
        })
    }

    /// Runs one forward pass over `encodings`, padded to the longest of them, and returns
    /// one normalised vector per encoding, in order.
    fn encode_padded(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>, AnalyzerError> {
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
            token_ids.extend(encoding.get_ids().iter().map(|&id| id as i32));
            token_ids.extend(std::iter::repeat_n(0i32, padding));
            attention.extend(
                encoding
                    .get_attention_mask()
                    .iter()
                    .map(|&keep| keep as i32),
            );
            attention.extend(std::iter::repeat_n(0i32, padding));
        }
        let forward_error =
            |error: ort::Error| AnalyzerError::Encoder(format!("onnx forward: {error}"));
        let shape = [rows, longest];
        let inputs = ort::inputs![
            "input_ids" => Tensor::from_array((shape, token_ids)).map_err(forward_error)?,
            "attention_mask" => Tensor::from_array((shape, attention.clone())).map_err(forward_error)?,
        ];
        let mut session = self.session()?;
        let outputs = session.run(inputs).map_err(forward_error)?;
        let Some(output) = outputs.get(OUTPUT_NAME) else {
            return Err(AnalyzerError::Encoder(format!("no {OUTPUT_NAME} output")));
        };
        let (output_shape, hidden) = output.try_extract_tensor::<f32>().map_err(forward_error)?;
        let expected = [rows as i64, longest as i64, MINILM_DIMENSIONS as i64];
        if output_shape[..] != expected[..] {
            return Err(AnalyzerError::Encoder(format!(
                "{OUTPUT_NAME} has shape {output_shape:?}, expected {expected:?}"
            )));
        }
        Ok((0..rows)
            .map(|row| {
                let row_hidden =
                    &hidden[row * longest * MINILM_DIMENSIONS..][..longest * MINILM_DIMENSIONS];
                let row_mask = &attention[row * longest..][..longest];
                mean_pool_normalised(row_hidden, row_mask)
            })
            .collect())
    }

    /// A free session, or the next one in turn to wait for.
    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>, AnalyzerError> {
        for session in &self.sessions {
            match session.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                    return Ok(poisoned.into_inner())
                }
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let turn = self.next_session.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        // A panic in an earlier caller (never inside ONNX Runtime, whose errors are values)
        // leaves the session itself intact: keep serving with it.
        Ok(self.sessions[turn]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Splits texts sorted longest first (`lengths`, in tokens) into forward passes of at most
/// `most` texts, starting a new pass where a text is under half the pass's longest and at
/// least [`SPLIT_PADDING_TOKENS`] shorter, so that a short question never pays for a long
/// answer's padding while short queries of different lengths still share a pass.
fn forward_passes(lengths: &[usize], most: usize) -> Vec<std::ops::Range<usize>> {
    let mut passes = Vec::new();
    let mut start = 0;
    for (position, &length) in lengths.iter().enumerate() {
        let full = position - start >= most;
        let longest = lengths[start];
        let too_short = length * 2 < longest && longest - length >= SPLIT_PADDING_TOKENS;
        if position > start && (full || too_short) {
            passes.push(start..position);
            start = position;
        }
    }
    if start < lengths.len() {
        passes.push(start..lengths.len());
    }
    passes
}

/// Mean of the token vectors the mask keeps, then L2 normalisation, with sentence-transformers'
/// guards (token count at least 1e-9, norm at least 1e-12). Sums run in token order, so a
/// row's vector depends only on its own values.
fn mean_pool_normalised(hidden: &[f32], mask: &[i32]) -> Vec<f32> {
    let mut summed = vec![0.0f32; MINILM_DIMENSIONS];
    let mut count = 0.0f32;
    for (token, &keep) in hidden.chunks_exact(MINILM_DIMENSIONS).zip(mask) {
        if keep == 0 {
            continue;
        }
        count += 1.0;
        for (sum, value) in summed.iter_mut().zip(token) {
            *sum += value;
        }
    }
    let count = count.max(1e-9);
    for value in &mut summed {
        *value /= count;
    }
    let norm = summed
        .iter()
        .map(|value| value * value)
        .sum::<f32>()
        .sqrt()
        .max(1e-12);
    for value in &mut summed {
        *value /= norm;
    }
    summed
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

impl Encoder for OnnxEncoder {
    fn name(&self) -> String {
        match self.precision {
            EncoderPrecision::Fp32 => MINILM_NAME.to_string(),
            EncoderPrecision::Int8 => format!("{MINILM_NAME} (int8)"),
        }
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
        let texts_per_forward = match self.precision {
            EncoderPrecision::Fp32 => TEXTS_PER_FORWARD,
            EncoderPrecision::Int8 => 1,
        };
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&index| std::cmp::Reverse(encodings[index].len()));
        let lengths: Vec<usize> = order.iter().map(|&index| encodings[index].len()).collect();
        let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for chunk in forward_passes(&lengths, texts_per_forward)
            .into_iter()
            .map(|range| &order[range])
        {
            let chunk_encodings: Vec<&Encoding> =
                chunk.iter().map(|&index| &encodings[index]).collect();
            let chunk_vectors = self.encode_padded(&chunk_encodings)?;
            for (&index, vector) in chunk.iter().zip(chunk_vectors) {
                vectors[index] = vector;
            }
        }
        debug!(
            texts = texts.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "onnx encoded"
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
        let options = OnnxOptions::new(directory.path(), directory.path().join("lib.so"));
        let error = OnnxEncoder::load(&options).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("tokenizer.json"), "{message}");
        assert!(message.contains("run `make model`"), "{message}");
        assert!(
            message.contains(&directory.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn forward_passes_cap_their_size_and_do_not_pad_short_texts_to_long_ones() {
        assert_eq!(
            forward_passes(&[], 16),
            Vec::<std::ops::Range<usize>>::new()
        );
        assert_eq!(forward_passes(&[150, 20], 16), vec![0..1, 1..2]);
        assert_eq!(forward_passes(&[30, 20, 16, 14], 16), vec![0..4]);
        assert_eq!(forward_passes(&[200, 120, 90, 60], 16), vec![0..2, 2..4]);
        assert_eq!(forward_passes(&[9; 5], 2), vec![0..2, 2..4, 4..5]);
        assert_eq!(forward_passes(&[9], 1), vec![0..1]);
    }

    #[test]
    fn pooling_skips_masked_tokens_and_normalises() {
        let mut hidden = vec![0.0f32; 3 * MINILM_DIMENSIONS];
        hidden[0] = 3.0;
        hidden[MINILM_DIMENSIONS + 1] = 4.0;
        hidden[2 * MINILM_DIMENSIONS + 2] = 100.0;
        let vector = mean_pool_normalised(&hidden, &[1, 1, 0]);
        assert!((vector[0] - 0.6).abs() < 1e-6, "{}", vector[0]);
        assert!((vector[1] - 0.8).abs() < 1e-6, "{}", vector[1]);
        assert_eq!(vector[2], 0.0);
    }
}
