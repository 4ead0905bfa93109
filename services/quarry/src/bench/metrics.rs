//! Ranking metrics as pytrec_eval computes them for BEIR: nDCG@k with graded gains (the qrels
//! value), a log2(rank + 1) discount and the ideal ranking taken from the qrels; recall@k
//! counting documents graded 1 or more; and latency percentiles.

use std::collections::HashMap;

/// Relevance grades of one query's judged documents.
pub type Judgements = HashMap<String, i64>;

/// nDCG@k of one ranked list of document ids.
pub fn ndcg_at_k(ranked: &[String], judgements: &Judgements, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(position, doc_id)| {
            let gain = judgements.get(doc_id).copied().unwrap_or(0).max(0) as f64;
            gain / ((position + 2) as f64).log2()
        })
        .sum();
    let mut ideal_gains: Vec<i64> = judgements
        .values()
        .copied()
        .filter(|grade| *grade > 0)
        .collect();
    ideal_gains.sort_unstable_by(|left, right| right.cmp(left));
    let ideal: f64 = ideal_gains
        .iter()
        .take(k)
        .enumerate()
        .map(|(position, gain)| *gain as f64 / ((position + 2) as f64).log2())
        .sum();
    if ideal == 0.0 {
        0.0
    } else {
        dcg / ideal
    }
}

/// Share of the relevant documents (grade >= 1) found in the first k.
pub fn recall_at_k(ranked: &[String], judgements: &Judgements, k: usize) -> f64 {
    let relevant = judgements.values().filter(|grade| **grade >= 1).count();
    if relevant == 0 {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|doc_id| judgements.get(*doc_id).is_some_and(|grade| *grade >= 1))
        .count();
    found as f64 / relevant as f64
}

/// The p-th percentile (0..=100) of `values` by nearest rank; 0 for none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(pairs: &[(&str, i64)]) -> Judgements {
        pairs
            .iter()
            .map(|(id, grade)| (id.to_string(), *grade))
            .collect()
    }

    fn ranked(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn ndcg_matches_hand_computed_values() {
        let judgements = judged(&[("a", 1), ("b", 1)]);
        assert!((ndcg_at_k(&ranked(&["a", "b", "c"]), &judgements, 10) - 1.0).abs() < 1e-12);
        // b at rank 2 only: (1/log2 3) / (1 + 1/log2 3)
        let expected = (1.0 / 3f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((ndcg_at_k(&ranked(&["x", "b"]), &judgements, 10) - expected).abs() < 1e-12);
        assert_eq!(ndcg_at_k(&ranked(&["x", "y"]), &judgements, 10), 0.0);
        // graded gains: the grade itself, as trec_eval's ndcg
        let graded = judged(&[("a", 2), ("b", 1)]);
        let swapped = (1.0 + 2.0 / 3f64.log2()) / (2.0 + 1.0 / 3f64.log2());
        assert!((ndcg_at_k(&ranked(&["b", "a"]), &graded, 10) - swapped).abs() < 1e-12);
        // the cut-off applies
        assert_eq!(ndcg_at_k(&ranked(&["x", "a"]), &judgements, 1), 0.0);
    }

    #[test]
    fn recall_counts_grades_of_one_or_more() {
        let judgements = judged(&[("a", 1), ("b", 2), ("c", 0)]);
        assert!((recall_at_k(&ranked(&["a", "c", "z"]), &judgements, 100) - 0.5).abs() < 1e-12);
        assert_eq!(recall_at_k(&ranked(&["b"]), &judged(&[]), 100), 0.0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
