//! What a user sees when ONNX Runtime's library is missing or is not ONNX Runtime: an error
//! at load that names the path and `make model`, never a panic. Its own test binary, because
//! ONNX Runtime, once loaded, stays loaded for the whole process.

use std::path::Path;

use quarry_analyzer::{OnnxEncoder, OnnxOptions};

const MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/all-MiniLM-L6-v2");

#[test]
fn a_missing_or_foreign_runtime_library_is_a_load_error_naming_make_model() {
    let missing = Path::new("/nonexistent/libonnxruntime.so");
    let error = OnnxEncoder::load(&OnnxOptions::new(MODEL_DIR, missing)).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("/nonexistent/libonnxruntime.so"),
        "{message}"
    );
    assert!(message.contains("run `make model`"), "{message}");

    // A shared library that is not ONNX Runtime (every Debian machine has libz).
    let foreign = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .map(Path::new)
    .find(|path| path.exists())
    .expect("libz.so.1");
    let error = OnnxEncoder::load(&OnnxOptions::new(MODEL_DIR, foreign)).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("OrtGetApiBase"), "{message}");
    assert!(message.contains("run `make model`"), "{message}");
}
