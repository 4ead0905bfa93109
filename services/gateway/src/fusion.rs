//! Fusion of ranked lists at the gateway: reciprocal rank fusion (Cormack et al., k = 60),
//! weighted by the plan, or a weighted sum of min-max normalised scores. Both work on the
//! global lists (every shard's candidates merged), so the result does not depend on how
//! the corpus is split; ties break by document id.

use std::collections::HashMap;

pub use quarry_kit::config::Fusion;

use crate::fan_out::{sort_best_first, ShardedCandidate};

/// One ranked list (best first) and its weight.
pub struct WeightedList<'a> {
    pub weight: f64,
    pub candidates: &'a [ShardedCandidate],
}

/// Fuses the lists; the result's scores are the fused scores, best first.
pub fn fuse(lists: &[WeightedList<'_>], fusion: Fusion, rrf_k: f64) -> Vec<ShardedCandidate> {
    let mut fused: HashMap<&str, (f64, &ShardedCandidate)> = HashMap::new();
    for list in lists {
        let contributions = match fusion {
            Fusion::Rrf => reciprocal_ranks(list.candidates, rrf_k),
            Fusion::Weighted => normalised_scores(list.candidates),
        };
        for (candidate, contribution) in list.candidates.iter().zip(contributions) {
            let entry = fused
                .entry(candidate.candidate.doc_id.as_str())
                .or_insert((0.0, candidate));
            entry.0 += list.weight * contribution;
        }
    }
    let mut result: Vec<ShardedCandidate> = fused
        .into_values()
        .map(|(score, candidate)| {
            let mut fused_candidate = candidate.clone();
            fused_candidate.candidate.score = score;
            fused_candidate
        })
        .collect();
    sort_best_first(&mut result);
    result
}

fn reciprocal_ranks(candidates: &[ShardedCandidate], rrf_k: f64) -> Vec<f64> {
    (1..=candidates.len())
        .map(|rank| 1.0 / (rrf_k + rank as f64))
        .collect()
}

fn normalised_scores(candidates: &[ShardedCandidate]) -> Vec<f64> {
    let scores = candidates.iter().map(|candidate| candidate.candidate.score);
    let max = scores.clone().fold(f64::NEG_INFINITY, f64::max);
    let min = scores.fold(f64::INFINITY, f64::min);
    let range = max - min;
    candidates
        .iter()
        .map(|candidate| {
            if range > 0.0 {
                (candidate.candidate.score - min) / range
            } else {
                1.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fan_out::Candidate;

    fn list(entries: &[(&str, f64)]) -> Vec<ShardedCandidate> {
        entries
            .iter()
            .map(|(id, score)| ShardedCandidate {
                shard: 0,
                candidate: Candidate {
                    doc_id: id.to_string(),
                    score: *score,
                    ..Candidate::default()
                },
            })
            .collect()
    }

    fn ids(fused: &[ShardedCandidate]) -> Vec<&str> {
        fused.iter().map(|c| c.candidate.doc_id.as_str()).collect()
    }

    #[test]
    fn reciprocal_rank_rewards_agreement_and_follows_weights() {
        let keyword = list(&[("a", 12.0), ("b", 9.0), ("c", 1.0)]);
        let vector = list(&[("c", 0.9), ("b", 0.8), ("d", 0.7)]);
        let balanced = fuse(
            &[
                WeightedList {
                    weight: 0.5,
                    candidates: &keyword,
                },
                WeightedList {
                    weight: 0.5,
                    candidates: &vector,
                },
            ],
            Fusion::Rrf,
            60.0,
        );
        // c (ranks 3 and 1) edges out b (2 and 2): 1/(k + r) is convex.
        assert_eq!(ids(&balanced), ["c", "b", "a", "d"]);
        let expected_c = 0.5 / 63.0 + 0.5 / 61.0;
        assert!((balanced[0].candidate.score - expected_c).abs() < 1e-12);
        assert!((balanced[1].candidate.score - 1.0 / 62.0).abs() < 1e-12);
        let semantic_heavy = fuse(
            &[
                WeightedList {
                    weight: 0.3,
                    candidates: &keyword,
                },
                WeightedList {
                    weight: 0.7,
                    candidates: &vector,
                },
            ],
            Fusion::Rrf,
            60.0,
        );
        assert_eq!(ids(&semantic_heavy)[..2], ["c", "b"]);
        let keyword_heavy = fuse(
            &[
                WeightedList {
                    weight: 1.0,
                    candidates: &keyword,
                },
                WeightedList {
                    weight: 0.0,
                    candidates: &vector,
                },
            ],
            Fusion::Rrf,
            60.0,
        );
        assert_eq!(ids(&keyword_heavy), ["a", "b", "c", "d"]);
    }

    #[test]
    fn weighted_sum_normalises_each_list() {
        let keyword = list(&[("a", 30.0), ("b", 20.0), ("c", 10.0)]);
        let vector = list(&[("c", 0.9), ("a", 0.5), ("b", 0.1)]);
        let fused = fuse(
            &[
                WeightedList {
                    weight: 0.5,
                    candidates: &keyword,
                },
                WeightedList {
                    weight: 0.5,
                    candidates: &vector,
                },
            ],
            Fusion::Weighted,
            60.0,
        );
        // a: 0.5·1 + 0.5·0.5; c: 0.5·0 + 0.5·1; b: 0.5·0.5 + 0.5·0
        assert_eq!(ids(&fused), ["a", "c", "b"]);
        assert!((fused[0].candidate.score - 0.75).abs() < 1e-12);
    }

    #[test]
    fn ties_break_by_id_and_empty_lists_are_fine() {
        let left = list(&[("z", 1.0)]);
        let right = list(&[("y", 1.0)]);
        let fused = fuse(
            &[
                WeightedList {
                    weight: 0.5,
                    candidates: &left,
                },
                WeightedList {
                    weight: 0.5,
                    candidates: &right,
                },
                WeightedList {
                    weight: 1.0,
                    candidates: &[],
                },
            ],
            Fusion::Rrf,
            60.0,
        );
        assert_eq!(ids(&fused), ["y", "z"]);
    }
}
