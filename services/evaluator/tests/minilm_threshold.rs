//! Calibration of `EMBEDDING_SUPPORT_THRESHOLD` on all-MiniLM-L6-v2 (`make model`): copied
//! sentences and paraphrases reach it; other claims on the same topic and unrelated
//! sentences do not. A negation is a known miss: embeddings barely see "no".

use quarry_analyzer::{Encoder, OnnxEncoder, OnnxOptions};
use quarry_evaluator::similarity::{cosine, EMBEDDING_SUPPORT_THRESHOLD};

const MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/all-MiniLM-L6-v2");
const RUNTIME_LIBRARY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/onnxruntime/libonnxruntime.so"
);
const INSULIN: &str = "Insulin lets cells absorb glucose from the blood.";
const VITAMIN_D: &str = "Vitamin D deficiency is associated with an increased risk of fractures.";
const KIWI: &str = "The kiwi is a flightless bird native to New Zealand.";
const ASPIRIN: &str = "Aspirin reduces the risk of heart attack in high-risk patients.";

fn similarity(encoder: &OnnxEncoder, passage: &str, answer: &str) -> f32 {
    let vectors = encoder
        .encode(&[passage.to_string(), answer.to_string()])
        .unwrap();
    cosine(&vectors[0], &vectors[1])
}

#[test]
fn paraphrases_reach_the_threshold_and_other_claims_do_not() {
    let encoder = OnnxEncoder::load(&OnnxOptions::new(MODEL_DIR, RUNTIME_LIBRARY)).unwrap();
    // Measured when the threshold was set: 1.000, 0.909, 0.831, 0.793, 0.986.
    let supported = [
        (INSULIN, INSULIN),
        (
            INSULIN,
            "Insulin allows the body's cells to take up sugar from the bloodstream.",
        ),
        (
            VITAMIN_D,
            "A lack of vitamin D raises the chance of broken bones.",
        ),
        (KIWI, "Kiwis, which live in New Zealand, cannot fly."),
        (
            ASPIRIN,
            "Aspirin lowers heart attack risk for patients at high risk.",
        ),
    ];
    // Measured: 0.712, 0.569, 0.102, 0.037.
    let unsupported = [
        (
            INSULIN,
            "Insulin is produced by the beta cells of the pancreas.",
        ),
        (VITAMIN_D, "Vitamin D is made in the skin under sunlight."),
        (INSULIN, "Paris is the capital of France."),
        (
            KIWI,
            "The moon is made of green cheese according to ancient sailors.",
        ),
    ];
    for (passage, answer) in supported {
        let score = similarity(&encoder, passage, answer);
        assert!(score >= EMBEDDING_SUPPORT_THRESHOLD, "{score:.3}: {answer}");
    }
    for (passage, answer) in unsupported {
        let score = similarity(&encoder, passage, answer);
        assert!(score < EMBEDDING_SUPPORT_THRESHOLD, "{score:.3}: {answer}");
    }
    // The known miss: a contradiction scores 0.762, close to the paraphrases.
    let negated = similarity(
        &encoder,
        VITAMIN_D,
        "Vitamin D deficiency has no effect on bone health.",
    );
    assert!(negated > 0.7, "{negated:.3}");
}
