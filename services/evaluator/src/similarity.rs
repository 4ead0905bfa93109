//! Sentence embeddings for the heuristic: which texts to embed (in one `Embed` call), the
//! vectors that come back lined up with the sentences, and cosine similarity. Pure: the
//! service makes the call.

use crate::heuristic::{answer_text, checkable_sentences, is_supported};

/// An answer sentence is supported by embeddings when its cosine similarity to some passage
/// sentence reaches this. Calibrated on all-MiniLM-L6-v2 (`tests/minilm_threshold.rs`): a
/// copied sentence scores 1.0, paraphrases 0.79 to 0.99, another claim on the same topic
/// 0.57 to 0.71, unrelated sentences about 0.1. A negated claim scores 0.76, so embeddings
/// alone do not catch contradictions.
pub const EMBEDDING_SUPPORT_THRESHOLD: f32 = 0.78;
/// More texts than this are not embedded for one evaluation (the lexical test alone judges).
pub const MAX_EMBEDDED_TEXTS: usize = 512;

/// Why the vectors could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SimilarityError {
    #[error("{texts} texts to embed, over the limit of {MAX_EMBEDDED_TEXTS}")]
    TooManyTexts { texts: usize },
    #[error("expected {expected} vectors, got {got}")]
    Count { expected: usize, got: usize },
    #[error("vectors of unequal or zero dimensions")]
    Dimensions,
}

/// The texts one evaluation embeds, in order: the question, the answer (citations stripped),
/// then — only when some answer sentence is not already supported by its words, since
/// embeddings can only add support — each checkable answer sentence and each checkable
/// passage sentence. An extractive answer copies its sentences, so it embeds two texts
/// instead of every sentence of every passage.
#[derive(Debug, Clone)]
pub struct EmbeddingInputs {
    texts: Vec<String>,
    answer_sentences: usize,
}

impl EmbeddingInputs {
    pub fn new(question: &str, answer: &str, passages: &[&str]) -> Result<Self, SimilarityError> {
        let answer_text = answer_text(answer);
        let answer_sentences: Vec<String> = checkable_sentences(&answer_text)
            .into_iter()
            .map(|(sentence, _)| sentence.to_string())
            .collect();
        let passage_sentences: Vec<(&str, Vec<String>)> = passages
            .iter()
            .flat_map(|passage| checkable_sentences(passage))
            .collect();
        let passage_terms: Vec<Vec<String>> = passage_sentences
            .iter()
            .map(|(_, terms)| terms.clone())
            .collect();
        let some_sentence_unsupported = checkable_sentences(&answer_text)
            .iter()
            .any(|(_, terms)| !is_supported(terms, &passage_terms));
        let mut texts = vec![question.trim().to_string(), answer_text.trim().to_string()];
        let answer_count = if some_sentence_unsupported {
            let count = answer_sentences.len();
            texts.extend(answer_sentences);
            texts.extend(
                passage_sentences
                    .into_iter()
                    .map(|(sentence, _)| sentence.to_string()),
            );
            count
        } else {
            0
        };
        if texts.len() > MAX_EMBEDDED_TEXTS {
            return Err(SimilarityError::TooManyTexts { texts: texts.len() });
        }
        Ok(Self {
            texts,
            answer_sentences: answer_count,
        })
    }

    pub fn texts(&self) -> &[String] {
        &self.texts
    }

    /// Lines `vectors` (one per text, in order) up with the sentences.
    pub fn attach(&self, mut vectors: Vec<Vec<f32>>) -> Result<SentenceVectors, SimilarityError> {
        if vectors.len() != self.texts.len() {
            return Err(SimilarityError::Count {
                expected: self.texts.len(),
                got: vectors.len(),
            });
        }
        let dimensions = vectors.first().map_or(0, Vec::len);
        if dimensions == 0 || vectors.iter().any(|vector| vector.len() != dimensions) {
            return Err(SimilarityError::Dimensions);
        }
        let passage_sentences = vectors.split_off(2 + self.answer_sentences);
        let answer_sentences = vectors.split_off(2);
        let answer = vectors.pop().unwrap_or_default();
        let question = vectors.pop().unwrap_or_default();
        Ok(SentenceVectors {
            question,
            answer,
            answer_sentences,
            passage_sentences,
        })
    }
}

/// Embeddings of one evaluation's texts.
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceVectors {
    pub question: Vec<f32>,
    pub answer: Vec<f32>,
    pub answer_sentences: Vec<Vec<f32>>,
    pub passage_sentences: Vec<Vec<f32>>,
}

impl SentenceVectors {
    /// Whether answer sentence `index` is close enough to some passage sentence.
    pub fn supports_answer_sentence(&self, index: usize) -> bool {
        self.best_support(index) >= EMBEDDING_SUPPORT_THRESHOLD
    }

    /// The highest cosine similarity of answer sentence `index` to a passage sentence
    /// (0 when there is none).
    pub fn best_support(&self, index: usize) -> f32 {
        let Some(sentence) = self.answer_sentences.get(index) else {
            return 0.0;
        };
        self.passage_sentences
            .iter()
            .map(|passage| cosine(sentence, passage))
            .fold(0.0, f32::max)
    }
}

/// Cosine similarity; 0 for vectors of different lengths or of zero norm.
pub fn cosine(left: &[f32], right: &[f32]) -> f32 {
    if left.len() != right.len() {
        return 0.0;
    }
    let (mut dot, mut left_norm, mut right_norm) = (0.0f32, 0.0f32, 0.0f32);
    for (a, b) in left.iter().zip(right) {
        dot += a * b;
        left_norm += a * a;
        right_norm += b * b;
    }
    let norms = (left_norm * right_norm).sqrt();
    if norms == 0.0 || !norms.is_finite() {
        return 0.0;
    }
    dot / norms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heuristic::{evaluate_heuristic, evaluate_with_embeddings};

    const PASSAGE: &str = "Insulin is a hormone made by the pancreas. Insulin lets cells absorb glucose from the blood.";
    const QUESTION: &str = "How does insulin help cells take up glucose?";
    /// Shares no content term with the passage: lexically unsupported.
    const PARAPHRASE: &str = "The pancreatic signal opens tissues to sugar uptake. [1]";

    fn unit(angle_degrees: f32) -> Vec<f32> {
        let radians = angle_degrees.to_radians();
        vec![radians.cos(), radians.sin()]
    }

    /// Question, answer, one answer sentence, two passage sentences.
    fn vectors(answer_sentence: Vec<f32>, answer: Vec<f32>) -> SentenceVectors {
        let inputs = EmbeddingInputs::new(QUESTION, PARAPHRASE, &[PASSAGE]).unwrap();
        assert_eq!(inputs.texts().len(), 5, "{:?}", inputs.texts());
        inputs
            .attach(vec![
                unit(0.0),
                answer,
                answer_sentence,
                unit(90.0),
                unit(10.0),
            ])
            .unwrap()
    }

    #[test]
    fn texts_are_question_answer_then_sentences_without_citations() {
        let inputs = EmbeddingInputs::new(
            QUESTION,
            "Insulin lowers glucose [1]. It works.",
            &[PASSAGE],
        )
        .unwrap();
        assert_eq!(
            inputs.texts(),
            [
                QUESTION,
                "Insulin lowers glucose . It works.",
                "Insulin lowers glucose .",
                "It works.",
                "Insulin is a hormone made by the pancreas.",
                "Insulin lets cells absorb glucose from the blood.",
            ]
        );
    }

    #[test]
    fn a_close_embedding_supports_a_sentence_the_words_do_not() {
        let lexical = evaluate_heuristic(QUESTION, PARAPHRASE, &[PASSAGE]);
        assert_eq!(lexical.groundedness, 0.0);

        // cos(5°) ≈ 0.996 to the second passage sentence: supported.
        let close = vectors(unit(5.0), unit(0.0));
        assert!(close.supports_answer_sentence(0));
        let judged = evaluate_with_embeddings(QUESTION, PARAPHRASE, &[PASSAGE], &close);
        assert_eq!(judged.groundedness, 1.0);
        assert_eq!((judged.supported_sentences, judged.total_sentences), (1, 1));
        assert!(judged.confidence > lexical.confidence);

        // cos(60°) = 0.5 to the nearest passage sentence: below the threshold.
        let far = vectors(unit(-50.0), unit(0.0));
        assert!((far.best_support(0) - 0.5).abs() < 1e-4);
        let judged = evaluate_with_embeddings(QUESTION, PARAPHRASE, &[PASSAGE], &far);
        assert_eq!(judged.groundedness, 0.0);
    }

    #[test]
    fn the_threshold_is_inclusive() {
        // Exactly at the threshold to the 10° passage sentence.
        let angle = 10.0 - EMBEDDING_SUPPORT_THRESHOLD.acos().to_degrees();
        let at = vectors(unit(angle + 0.01), unit(0.0));
        assert!(at.best_support(0) >= EMBEDDING_SUPPORT_THRESHOLD - 1e-4);
        let below = vectors(unit(angle - 1.0), unit(0.0));
        assert!(!below.supports_answer_sentence(0));
    }

    #[test]
    fn lexical_support_still_counts_when_embeddings_disagree() {
        let copied = "Insulin lets cells absorb glucose from the blood. [1]";
        let inputs = EmbeddingInputs::new(QUESTION, copied, &[PASSAGE]).unwrap();
        assert_eq!(
            inputs.texts().len(),
            2,
            "every sentence is supported by its words: only the question and the answer are embedded"
        );
        let far = inputs.attach(vec![unit(0.0), unit(-90.0)]).unwrap();
        let judged = evaluate_with_embeddings(QUESTION, copied, &[PASSAGE], &far);
        assert_eq!(judged.groundedness, 1.0);
        assert_eq!(
            judged.relevance, 0.0,
            "relevance still comes from the vectors"
        );
    }

    #[test]
    fn relevance_is_the_question_answer_cosine() {
        let judged = evaluate_with_embeddings(
            QUESTION,
            PARAPHRASE,
            &[PASSAGE],
            &vectors(unit(5.0), unit(60.0)),
        );
        assert!((judged.relevance - 0.5).abs() < 1e-4, "{judged:?}");
        // Opposite vectors clamp to 0.
        let judged = evaluate_with_embeddings(
            QUESTION,
            PARAPHRASE,
            &[PASSAGE],
            &vectors(unit(5.0), unit(180.0)),
        );
        assert_eq!(judged.relevance, 0.0);
    }

    #[test]
    fn vectors_that_do_not_line_up_are_refused_or_ignored() {
        let inputs = EmbeddingInputs::new(QUESTION, PARAPHRASE, &[PASSAGE]).unwrap();
        assert!(matches!(
            inputs.attach(vec![unit(0.0); 4]),
            Err(SimilarityError::Count {
                expected: 5,
                got: 4
            })
        ));
        let mut ragged = vec![unit(0.0); 5];
        ragged[3] = vec![1.0];
        assert!(matches!(
            inputs.attach(ragged),
            Err(SimilarityError::Dimensions)
        ));
        assert!(matches!(
            inputs.attach(vec![Vec::new(); 5]),
            Err(SimilarityError::Dimensions)
        ));

        // Vectors made for other passages: the lexical verdict stands.
        let other = vectors(unit(5.0), unit(0.0));
        let judged = evaluate_with_embeddings(QUESTION, PARAPHRASE, &[PASSAGE, PASSAGE], &other);
        assert_eq!(
            judged,
            evaluate_heuristic(QUESTION, PARAPHRASE, &[PASSAGE, PASSAGE])
        );
    }

    #[test]
    fn cosine_handles_degenerate_vectors() {
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
        assert!((cosine(&[2.0, 0.0], &[3.0, 0.0]) - 1.0).abs() < 1e-6);
        let many = "Sentence number one is here. ".repeat(MAX_EMBEDDED_TEXTS);
        assert!(matches!(
            EmbeddingInputs::new(QUESTION, "An answer.", &[many.as_str()]),
            Err(SimilarityError::TooManyTexts { .. })
        ));
    }
}
