//! `quarry bench analyzer`: the rule-based query-type classifier's accuracy and confusion
//! matrix on a labelled file (`question<TAB>type` per line, after a header).

use std::path::Path;

use anyhow::{bail, Context};
use quarry_analyzer::rules::{classify, QueryType};
use serde_json::json;

use super::print_and_save;

const TYPES: [QueryType; 4] = [
    QueryType::Factual,
    QueryType::Procedural,
    QueryType::Analytical,
    QueryType::Creative,
];

fn type_index(query_type: QueryType) -> usize {
    TYPES
        .iter()
        .position(|known| *known == query_type)
        .unwrap_or(0)
}

pub fn run_analyzer_bench(file: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let content =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut confusion = [[0u32; 4]; 4];
    let mut misses = Vec::new();
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
        let Some(expected) = TYPES
            .into_iter()
            .find(|known| known.as_str() == label.trim())
        else {
            bail!("{}:{}: unknown type {label:?}", file.display(), index + 1);
        };
        let predicted = classify(question).query_type;
        confusion[type_index(expected)][type_index(predicted)] += 1;
        if predicted != expected {
            misses.push(json!({ "question": question, "expected": expected.as_str(), "predicted": predicted.as_str() }));
        }
    }
    let total: u32 = confusion.iter().flatten().sum();
    let correct: u32 = (0..4).map(|index| confusion[index][index]).sum();
    let report = json!({
        "file": file.display().to_string(),
        "questions": total,
        "accuracy": if total == 0 { 0.0 } else { f64::from(correct) / f64::from(total) },
        "labels": TYPES.iter().map(|query_type| query_type.as_str()).collect::<Vec<_>>(),
        "confusion_rows_expected_columns_predicted": confusion,
        "misses": misses,
    });
    print_and_save(&report, out)
}
