//! `quarry bench analyzer`: query-type accuracy on a labelled file (`question<TAB>type` per
//! line, after a header) — of the cue rules, of the trained head over the question's
//! embedding, and of the two combined as the analyzer runs them — with the head's accuracy
//! cross-validated (10 folds, repeated over 5 shuffles: the head is trained on nine folds and
//! scored on the tenth). With `--train FILE` it also trains the head on the whole file and
//! writes it to FILE (`services/analyzer/src/query_type_head.json` is compiled in).
//!
//! The rules were tuned on this very file, so their accuracy here (and the combination's) is
//! an upper bound; the head's cross-validated accuracy is the honest estimate.

use std::path::Path;

use anyhow::{bail, Context};
use quarry_analyzer::query_head::{combine, QueryTypeHead, TrainingOptions};
use quarry_analyzer::rules::{classify, QueryType};
use quarry_kit::config::QuarryConfig;
use serde_json::json;

use super::print_and_save;
use crate::roles::build_encoder;

const FOLDS: usize = 10;
const SHUFFLES: u64 = 5;

fn type_index(query_type: QueryType) -> usize {
    QueryType::ALL
        .iter()
        .position(|known| *known == query_type)
        .unwrap_or(0)
}

/// The labelled questions of `file`.
fn read_labelled(file: &Path) -> anyhow::Result<Vec<(String, QueryType)>> {
    let content =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut labelled = Vec::new();
    for (index, line) in content.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let Some((question, label)) = line.split_once('\t') else {
            bail!(
                "{}:{}: expected question<TAB>type",
                file.display(),
                index + 1
            );
        };
        let Some(expected) = QueryType::ALL
            .into_iter()
            .find(|known| known.as_str() == label.trim())
        else {
            bail!("{}:{}: unknown type {label:?}", file.display(), index + 1);
        };
        labelled.push((question.to_string(), expected));
    }
    Ok(labelled)
}

/// A deterministic permutation of `0..count` (xorshift, seeded).
fn shuffled(count: usize, seed: u64) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut order: Vec<usize> = (0..count).collect();
    for last in (1..count).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(last, (state % (last as u64 + 1)) as usize);
    }
    order
}

/// Accuracy over a confusion matrix.
fn accuracy(confusion: &[[u32; 4]; 4]) -> f64 {
    let total: u32 = confusion.iter().flatten().sum();
    let correct: u32 = (0..4).map(|index| confusion[index][index]).sum();
    if total == 0 {
        0.0
    } else {
        f64::from(correct) / f64::from(total)
    }
}

pub async fn run_analyzer_bench(
    file: &Path,
    held_out: Option<&Path>,
    train: Option<&Path>,
    out: Option<&Path>,
    config: &QuarryConfig,
) -> anyhow::Result<()> {
    let labelled = read_labelled(file)?;
    let mut rules_confusion = [[0u32; 4]; 4];
    let mut misses = Vec::new();
    for (question, expected) in &labelled {
        let predicted = classify(question).query_type;
        rules_confusion[type_index(*expected)][type_index(predicted)] += 1;
        if predicted != *expected {
            misses.push(json!({ "question": question, "expected": expected.as_str(), "predicted": predicted.as_str() }));
        }
    }
    let mut report = json!({
        "file": file.display().to_string(),
        "questions": labelled.len(),
        "labels": QueryType::ALL.iter().map(|query_type| query_type.as_str()).collect::<Vec<_>>(),
        "rules": {
            "accuracy": accuracy(&rules_confusion),
            "confusion_rows_expected_columns_predicted": rules_confusion,
            "misses": misses,
            "note": "the rules were tuned on this file",
        },
    });

    let encoder = build_encoder(config)?;
    if let Some(encoder) = encoder {
        let questions: Vec<String> = labelled
            .iter()
            .map(|(question, _)| question.clone())
            .collect();
        let vectors = encoder.encode(&questions)?;
        let examples: Vec<(Vec<f32>, QueryType)> = vectors
            .into_iter()
            .zip(labelled.iter().map(|(_, label)| *label))
            .collect();
        let options = TrainingOptions::default();
        let mut head_confusion = [[0u32; 4]; 4];
        let mut combined_confusion = [[0u32; 4]; 4];
        let mut rules_deferred = 0u32;
        for seed in 1..=SHUFFLES {
            let order = shuffled(examples.len(), seed);
            for fold in 0..FOLDS {
                let (held_out, training): (Vec<usize>, Vec<usize>) =
                    (0..order.len()).partition(|position| position % FOLDS == fold);
                let training: Vec<(Vec<f32>, QueryType)> = training
                    .into_iter()
                    .map(|position| examples[order[position]].clone())
                    .collect();
                let head = QueryTypeHead::train(&encoder.name(), &training, options);
                for position in held_out {
                    let index = order[position];
                    let (vector, expected) = &examples[index];
                    let probabilities = head.probabilities(vector);
                    let head_type = head.predict(vector).unwrap_or(QueryType::Factual);
                    head_confusion[type_index(*expected)][type_index(head_type)] += 1;
                    let rules = classify(&labelled[index].0);
                    if rules.confidence < quarry_analyzer::query_head::RULES_SURE_CONFIDENCE {
                        rules_deferred += 1;
                    }
                    let combined = combine(rules, probabilities).query_type;
                    combined_confusion[type_index(*expected)][type_index(combined)] += 1;
                }
            }
        }
        report["encoder"] = json!(encoder.name());
        report["head_cross_validated"] = json!({
            "folds": FOLDS,
            "shuffles": SHUFFLES,
            "accuracy": accuracy(&head_confusion),
            "confusion_rows_expected_columns_predicted": head_confusion,
        });
        report["combined_cross_validated"] = json!({
            "accuracy": accuracy(&combined_confusion),
            "share_decided_by_the_head": f64::from(rules_deferred) / (SHUFFLES as f64 * examples.len() as f64),
            "rules_sure_confidence": quarry_analyzer::query_head::RULES_SURE_CONFIDENCE,
            "confusion_rows_expected_columns_predicted": combined_confusion,
        });
        let head = QueryTypeHead::train(&encoder.name(), &examples, options);
        if let Some(held_out) = held_out {
            let questions = read_labelled(held_out)?;
            let texts: Vec<String> = questions
                .iter()
                .map(|(question, _)| question.clone())
                .collect();
            let vectors = encoder.encode(&texts)?;
            let mut correct = [0u32; 3];
            for ((question, expected), vector) in questions.iter().zip(&vectors) {
                let rules = classify(question);
                let head_type = head.predict(vector).unwrap_or(QueryType::Factual);
                correct[0] += u32::from(rules.query_type == *expected);
                correct[1] += u32::from(head_type == *expected);
                correct[2] +=
                    u32::from(combine(rules, head.probabilities(vector)).query_type == *expected);
            }
            let share = |count: u32| f64::from(count) / questions.len().max(1) as f64;
            report["held_out"] = json!({
                "file": held_out.display().to_string(),
                "questions": questions.len(),
                "rules_accuracy": share(correct[0]),
                "head_accuracy": share(correct[1]),
                "combined_accuracy": share(correct[2]),
                "note": "the head trained on the whole labelled file, scored on questions it never saw",
            });
        }
        if let Some(train) = train {
            let text = serde_json::to_string(&head)?;
            std::fs::write(train, text + "\n")
                .with_context(|| format!("writing {}", train.display()))?;
            report["trained_head"] = json!(train.display().to_string());
        }
    } else if train.is_some() {
        bail!("--train needs an encoder (analyzer.encoder)");
    }
    print_and_save(&report, out)
}
