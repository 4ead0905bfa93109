//! `QueryTypeHead`: a small trained classifier over the question's embedding — the vector
//! the analyzer computes anyway for the search — that decides the query type where the cue
//! rules are not sure.
//!
//! The head is multinomial logistic regression (four classes, one weight per embedding
//! dimension and class, plus a bias), trained by full-batch gradient descent with L2
//! regularisation on a labelled `question<TAB>type` file: `quarry bench analyzer --train`
//! trains it on `../shared/data/query-types.tsv`, reports its cross-validated accuracy, and
//! writes `query_type_head.json`, which is compiled into the analyzer. It belongs to the
//! encoder it was trained on (all-MiniLM-L6-v2; its int8 variant's vectors are within cosine
//! 0.99 of those) and is not used with any other.
//!
//! Combination ([`combine`]): the rules decide when their confidence is at least
//! [`RULES_SURE_CONFIDENCE`]; below it the head's most probable type wins, with the head's
//! probability as the confidence.

use serde::{Deserialize, Serialize};

use crate::rules::{Classification, QueryType};

/// Rules at or above this confidence decide alone.
pub const RULES_SURE_CONFIDENCE: f32 = 0.5;

/// How the head is trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingOptions {
    pub epochs: usize,
    pub learning_rate: f32,
    pub l2: f32,
}

impl Default for TrainingOptions {
    /// Chosen by 10-fold cross-validation on query-types.tsv (see the README).
    fn default() -> Self {
        Self {
            epochs: 400,
            learning_rate: 5.0,
            l2: 0.001,
        }
    }
}

/// Logistic regression from an embedding to the four query types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryTypeHead {
    /// The encoder whose vectors the head was trained on.
    pub encoder: String,
    /// `weights[class][dimension]`, classes in [`QueryType::ALL`] order.
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
}

const BUILTIN_HEAD: &str = include_str!("query_type_head.json");

impl QueryTypeHead {
    /// The head compiled into the analyzer, for vectors of `encoder`; `None` for any other
    /// encoder. The int8 variant of the same model shares its head.
    pub fn builtin_for(encoder: &str) -> Option<Self> {
        let head: Self = serde_json::from_str(BUILTIN_HEAD).ok()?;
        head.is_valid()
            .then_some(head)
            .filter(|head| encoder.starts_with(head.encoder.as_str()))
    }

    fn is_valid(&self) -> bool {
        self.weights.len() == QueryType::ALL.len()
            && self.bias.len() == QueryType::ALL.len()
            && self
                .weights
                .iter()
                .all(|row| !row.is_empty() && row.len() == self.weights[0].len())
    }

    /// Dimensions of the vectors the head takes.
    pub fn dimensions(&self) -> usize {
        self.weights.first().map_or(0, Vec::len)
    }

    /// Trains on `(vector, type)` examples; deterministic for the same examples.
    pub fn train(
        encoder: &str,
        examples: &[(Vec<f32>, QueryType)],
        options: TrainingOptions,
    ) -> Self {
        let dimensions = examples.first().map_or(0, |(vector, _)| vector.len());
        let classes = QueryType::ALL.len();
        let mut weights = vec![vec![0.0f32; dimensions]; classes];
        let mut bias = vec![0.0f32; classes];
        let count = examples.len().max(1) as f32;
        for _ in 0..options.epochs {
            let mut weight_gradient = vec![vec![0.0f32; dimensions]; classes];
            let mut bias_gradient = vec![0.0f32; classes];
            for (vector, label) in examples {
                let probabilities = softmax(&logits(&weights, &bias, vector));
                for class in 0..classes {
                    let target = if class == label.index() { 1.0 } else { 0.0 };
                    let error = (probabilities[class] - target) / count;
                    bias_gradient[class] += error;
                    for (gradient, value) in weight_gradient[class].iter_mut().zip(vector) {
                        *gradient += error * value;
                    }
                }
            }
            for class in 0..classes {
                bias[class] -= options.learning_rate * bias_gradient[class];
                for (weight, gradient) in weights[class].iter_mut().zip(&weight_gradient[class]) {
                    *weight -= options.learning_rate * (gradient + options.l2 * *weight);
                }
            }
        }
        Self {
            encoder: encoder.to_string(),
            weights,
            bias,
        }
    }

    /// Probability of each type, in [`QueryType::ALL`] order; `None` for a vector of another
    /// width.
    pub fn probabilities(&self, vector: &[f32]) -> Option<[f32; 4]> {
        if vector.len() != self.dimensions() {
            return None;
        }
        let probabilities = softmax(&logits(&self.weights, &self.bias, vector));
        Some([
            probabilities[0],
            probabilities[1],
            probabilities[2],
            probabilities[3],
        ])
    }

    /// The most probable type.
    pub fn predict(&self, vector: &[f32]) -> Option<QueryType> {
        self.probabilities(vector)
            .map(|probabilities| most_probable(&probabilities).0)
    }
}

fn logits(weights: &[Vec<f32>], bias: &[f32], vector: &[f32]) -> Vec<f32> {
    weights
        .iter()
        .zip(bias)
        .map(|(row, bias)| bias + row.iter().zip(vector).map(|(w, x)| w * x).sum::<f32>())
        .collect()
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let largest = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exponentials: Vec<f32> = logits.iter().map(|logit| (logit - largest).exp()).collect();
    let total: f32 = exponentials.iter().sum();
    exponentials.iter().map(|value| value / total).collect()
}

fn most_probable(probabilities: &[f32; 4]) -> (QueryType, f32) {
    QueryType::ALL
        .into_iter()
        .zip(probabilities.iter().copied())
        .fold(
            (QueryType::Factual, f32::NEG_INFINITY),
            |best, candidate| {
                if candidate.1 > best.1 {
                    candidate
                } else {
                    best
                }
            },
        )
}

/// The rules' classification where they are sure, else the head's most probable type.
pub fn combine(rules: Classification, head_probabilities: Option<[f32; 4]>) -> Classification {
    let Some(probabilities) = head_probabilities else {
        return rules;
    };
    if rules.confidence >= RULES_SURE_CONFIDENCE {
        return rules;
    }
    let (query_type, probability) = most_probable(&probabilities);
    if query_type == rules.query_type {
        return Classification {
            confidence: rules.confidence.max(probability),
            ..rules
        };
    }
    Classification {
        query_type,
        confidence: probability,
        intent: crate::rules::default_intent(query_type).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(values: [f32; 3], query_type: QueryType) -> (Vec<f32>, QueryType) {
        (values.to_vec(), query_type)
    }

    #[test]
    fn a_trained_head_separates_separable_classes() {
        let examples = vec![
            example([1.0, 0.0, 0.0], QueryType::Factual),
            example([0.9, 0.1, 0.0], QueryType::Factual),
            example([0.0, 1.0, 0.0], QueryType::Procedural),
            example([0.1, 0.9, 0.0], QueryType::Procedural),
            example([0.0, 0.0, 1.0], QueryType::Analytical),
            example([0.0, 0.1, 0.9], QueryType::Analytical),
            example([-1.0, -1.0, 0.0], QueryType::Creative),
            example([-0.9, -1.0, 0.1], QueryType::Creative),
        ];
        let head = QueryTypeHead::train("test", &examples, TrainingOptions::default());
        for (vector, expected) in &examples {
            assert_eq!(head.predict(vector), Some(*expected), "{vector:?}");
        }
        assert_eq!(head.probabilities(&[1.0, 0.0]), None, "another width");
        let again = QueryTypeHead::train("test", &examples, TrainingOptions::default());
        assert_eq!(head, again, "training is deterministic");
    }

    #[test]
    fn sure_rules_decide_and_unsure_rules_defer_to_the_head() {
        let rules = |confidence| Classification {
            query_type: QueryType::Factual,
            confidence,
            intent: "definition".to_string(),
        };
        let head_says_creative = Some([0.1, 0.1, 0.1, 0.7]);
        let sure = combine(rules(0.8), head_says_creative);
        assert_eq!(sure.query_type, QueryType::Factual);
        let unsure = combine(rules(0.3), head_says_creative);
        assert_eq!(unsure.query_type, QueryType::Creative);
        assert_eq!(unsure.confidence, 0.7);
        assert_eq!(combine(rules(0.3), None).query_type, QueryType::Factual);
    }

    #[test]
    fn the_builtin_head_belongs_to_minilm_only() {
        let head = QueryTypeHead::builtin_for(crate::MINILM_NAME).expect("the compiled-in head");
        assert_eq!(head.dimensions(), crate::MINILM_DIMENSIONS);
        assert!(QueryTypeHead::builtin_for("hash-384").is_none());
    }
}
