//! Quarry's MiniLM vectors against sentence-transformers' own for the sentences in
//! `fixtures/minilm-reference.json` (made by `fixtures/make_minilm_reference.py`): alone and
//! in one padded batch.

use std::path::Path;

use quarry_analyzer::{Encoder, MiniLmEncoder, MINILM_DIMENSIONS};
use serde::Deserialize;

const MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/all-MiniLM-L6-v2");
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/minilm-reference.json"
);

#[derive(Deserialize)]
struct Reference {
    sentences: Vec<ReferenceSentence>,
}

#[derive(Deserialize)]
struct ReferenceSentence {
    text: String,
    tokens_untruncated: usize,
    embedding: Vec<f32>,
}

fn cosine(left: &[f32], right: &[f32]) -> f32 {
    let dot: f32 = left.iter().zip(right).map(|(a, b)| a * b).sum();
    let norm = |vector: &[f32]| vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    dot / (norm(left) * norm(right))
}

fn load() -> (MiniLmEncoder, Reference) {
    let model_dir = Path::new(MODEL_DIR);
    assert!(
        model_dir.join("model.safetensors").is_file(),
        "{} has no model.safetensors: run `make model`",
        model_dir.display()
    );
    let encoder = MiniLmEncoder::load(model_dir).expect("load all-MiniLM-L6-v2");
    let fixture = std::fs::read_to_string(FIXTURE).expect("read the reference fixture");
    let reference: Reference = serde_json::from_str(&fixture).expect("parse the fixture");
    (encoder, reference)
}

#[test]
fn vectors_match_sentence_transformers_alone_and_in_one_padded_batch() {
    let (encoder, reference) = load();
    assert!(
        reference
            .sentences
            .iter()
            .any(|s| s.tokens_untruncated > 256),
        "the fixture must exercise truncation at 256 tokens"
    );
    let texts: Vec<String> = reference.sentences.iter().map(|s| s.text.clone()).collect();
    let batched = encoder.encode(&texts).expect("encode the batch");
    assert_eq!(batched.len(), texts.len());
    for (sentence, in_batch) in reference.sentences.iter().zip(&batched) {
        let alone = encoder
            .encode(std::slice::from_ref(&sentence.text))
            .expect("encode one sentence")
            .remove(0);
        assert_eq!(alone.len(), MINILM_DIMENSIONS);
        let norm = alone.iter().map(|value| value * value).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        let similarity = cosine(&alone, &sentence.embedding);
        assert!(
            similarity >= 0.999,
            "cosine {similarity} with sentence-transformers for {:?}",
            sentence.text
        );
        let largest_difference = alone
            .iter()
            .zip(in_batch)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            largest_difference <= 1e-4,
            "batched vector differs from the single one by {largest_difference} for {:?}",
            sentence.text
        );
    }
}

#[test]
fn related_sentences_are_closer_than_unrelated_ones() {
    let (encoder, _) = load();
    let vectors = encoder
        .encode(&[
            "What causes vitamin D deficiency?".to_string(),
            "Low vitamin D levels result from too little sunlight.".to_string(),
            "The kiwi is a flightless bird of New Zealand.".to_string(),
        ])
        .expect("encode");
    assert!(cosine(&vectors[0], &vectors[1]) > cosine(&vectors[0], &vectors[2]) + 0.2);
}
