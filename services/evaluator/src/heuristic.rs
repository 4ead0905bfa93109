//! Heuristic answer evaluator: scores an answer's groundedness, relevance and citation validity
//! against the question and the retrieved passages. Lexical overlap always; sentence
//! embeddings too when the caller has them (`crate::similarity`).

use quarry_kit::text::{content_terms, split_sentences, term_coverage, NO_ANSWER};

use crate::similarity::{cosine, SentenceVectors};

/// An answer sentence is lexically supported when some passage sentence reaches this
/// [`sentence_support`] score.
pub const SUPPORT_THRESHOLD: f32 = 0.6;
/// Confidence = 0.5·groundedness + 0.3·relevance + 0.2·citation_validity, clamped to 0..1.
pub const GROUNDEDNESS_WEIGHT: f32 = 0.5;
pub const RELEVANCE_WEIGHT: f32 = 0.3;
pub const CITATION_WEIGHT: f32 = 0.2;
/// Confidence never exceeds this for the fixed "no answer" reply.
pub const NO_ANSWER_CONFIDENCE_CAP: f32 = 0.2;
/// Relevance given when the question has no content terms to compare against.
const NEUTRAL_RELEVANCE: f32 = 0.5;
/// Longest text between `[` and `]` still read as a citation marker, in bytes.
const MAX_CITATION_BODY_BYTES: usize = 64;

/// How well an answer holds up against the question and the passages it was built from.
#[derive(Debug, Clone, PartialEq)]
pub struct HeuristicEvaluation {
    /// Share of answer sentences supported by some passage sentence (0..1).
    pub groundedness: f32,
    /// How well the answer addresses the question (0..1).
    pub relevance: f32,
    /// Share of `[n]` citations that name an existing passage; 0 when the answer cites nothing.
    pub citation_validity: f32,
    /// `0.5*groundedness + 0.3*relevance + 0.2*citation_validity`, clamped to 0..1 and capped at
    /// [`NO_ANSWER_CONFIDENCE_CAP`] for the "no answer" reply.
    pub confidence: f32,
    pub supported_sentences: u32,
    /// Answer sentences that carry at least one content term (the ones that can be checked).
    pub total_sentences: u32,
    /// A short human-readable judgement.
    pub evaluation: String,
}

/// Evaluates `answer` to `question` against `passages`, where `passages[i]` is cited as `[i+1]`.
///
/// Citation markers (`[2]`, `[1, 3]`) are counted and then stripped before the answer is split
/// into sentences. An answer sentence is supported when [`sentence_support`] against some
/// passage sentence reaches [`SUPPORT_THRESHOLD`]. Relevance is the square root of the share of
/// the question's content terms found in the answer. Never panics.
pub fn evaluate_heuristic(question: &str, answer: &str, passages: &[&str]) -> HeuristicEvaluation {
    evaluate_sentences(question, answer, passages, None)
}

/// [`evaluate_heuristic`] with sentence embeddings (made by
/// [`crate::similarity::EmbeddingInputs`] from the same question, answer and passages).
///
/// An answer sentence is supported when it passes the lexical test **or** the cosine
/// similarity of its embedding to some passage sentence's reaches
/// [`crate::similarity::EMBEDDING_SUPPORT_THRESHOLD`]. Relevance is the cosine similarity of the question's and
/// the answer's embeddings, clamped to 0..1. Vectors that do not line up with the sentences
/// are ignored (the lexical verdict stands).
pub fn evaluate_with_embeddings(
    question: &str,
    answer: &str,
    passages: &[&str],
    vectors: &SentenceVectors,
) -> HeuristicEvaluation {
    evaluate_sentences(question, answer, passages, Some(vectors))
}

/// The answer with its citation markers stripped: what is split into sentences and embedded.
pub(crate) fn answer_text(answer: &str) -> String {
    let trimmed_answer = answer.trim();
    strip_citations(trimmed_answer, &find_citations(trimmed_answer))
}

/// The sentences of `text` that carry content terms (the ones that can be checked), with
/// those terms.
pub(crate) fn checkable_sentences(text: &str) -> Vec<(&str, Vec<String>)> {
    split_sentences(text)
        .into_iter()
        .map(|sentence| (sentence, content_terms(sentence)))
        .filter(|(_, terms)| !terms.is_empty())
        .collect()
}

fn evaluate_sentences(
    question: &str,
    answer: &str,
    passages: &[&str],
    vectors: Option<&SentenceVectors>,
) -> HeuristicEvaluation {
    let trimmed_answer = answer.trim();
    if trimmed_answer.is_empty() {
        return empty_answer_evaluation();
    }

    let citations = find_citations(trimmed_answer);
    let cited_numbers: Vec<Option<usize>> = citations
        .iter()
        .flat_map(|citation| citation.numbers.iter().copied())
        .collect();
    let valid_citations = cited_numbers
        .iter()
        .filter(|number| matches!(number, Some(value) if (1..=passages.len()).contains(value)))
        .count();
    let citation_validity = ratio(valid_citations, cited_numbers.len());

    let answer_text = strip_citations(trimmed_answer, &citations);
    let passage_sentence_terms: Vec<Vec<String>> = passages
        .iter()
        .flat_map(|passage| checkable_sentences(passage))
        .map(|(_, terms)| terms)
        .collect();
    let answer_sentence_terms: Vec<Vec<String>> = checkable_sentences(&answer_text)
        .into_iter()
        .map(|(_, terms)| terms)
        .collect();
    // Sentence vectors line up with the sentences, or are absent because every answer
    // sentence is supported by its words (then only the question and answer were embedded).
    let vectors = vectors.filter(|vectors| {
        let lined_up = vectors.answer_sentences.len() == answer_sentence_terms.len()
            && vectors.passage_sentences.len() == passage_sentence_terms.len();
        let sentences_skipped =
            vectors.answer_sentences.is_empty() && vectors.passage_sentences.is_empty();
        lined_up || sentences_skipped
    });

    let supported_count = answer_sentence_terms
        .iter()
        .enumerate()
        .filter(|(index, answer_terms)| {
            is_supported(answer_terms, &passage_sentence_terms)
                || vectors.is_some_and(|vectors| vectors.supports_answer_sentence(*index))
        })
        .count();
    let total_count = answer_sentence_terms.len();
    let groundedness = ratio(supported_count, total_count);
    let relevance = match vectors {
        Some(vectors) if !answer_sentence_terms.is_empty() => {
            cosine(&vectors.question, &vectors.answer).clamp(0.0, 1.0)
        }
        _ => relevance(question, &answer_text),
    };

    let declines_to_answer = is_no_answer_reply(&answer_text);
    let combined = GROUNDEDNESS_WEIGHT * groundedness
        + RELEVANCE_WEIGHT * relevance
        + CITATION_WEIGHT * citation_validity;
    let mut confidence = combined.clamp(0.0, 1.0);
    if declines_to_answer {
        confidence = confidence.min(NO_ANSWER_CONFIDENCE_CAP);
    }

    let evaluation = describe(
        declines_to_answer,
        supported_count,
        total_count,
        relevance,
        valid_citations,
        cited_numbers.len(),
    );
    HeuristicEvaluation {
        groundedness,
        relevance,
        citation_validity,
        confidence,
        supported_sentences: saturating_u32(supported_count),
        total_sentences: saturating_u32(total_count),
        evaluation,
    }
}

/// How strongly one passage sentence supports one answer sentence (0..1): the share of the
/// answer sentence's content terms that the passage sentence contains. Lexical for now; kept
/// as the single place to swap in an embedding similarity.
pub fn sentence_support(answer_terms: &[String], passage_terms: &[String]) -> f32 {
    term_coverage(answer_terms, passage_terms)
}

/// Whether some passage sentence supports an answer sentence by its words.
pub(crate) fn is_supported(
    answer_terms: &[String],
    passage_sentence_terms: &[Vec<String>],
) -> bool {
    passage_sentence_terms
        .iter()
        .any(|passage_terms| sentence_support(answer_terms, passage_terms) >= SUPPORT_THRESHOLD)
}

fn relevance(question: &str, answer_text: &str) -> f32 {
    let answer_terms = content_terms(answer_text);
    if answer_terms.is_empty() {
        return 0.0;
    }
    let question_terms = content_terms(question);
    if question_terms.is_empty() {
        return NEUTRAL_RELEVANCE;
    }
    term_coverage(&question_terms, &answer_terms)
        .clamp(0.0, 1.0)
        .sqrt()
}

fn is_no_answer_reply(answer_text: &str) -> bool {
    let normalised = normalise_for_comparison(answer_text);
    normalised == normalise_for_comparison(NO_ANSWER)
}

fn normalise_for_comparison(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches('.')
        .to_lowercase()
}

fn empty_answer_evaluation() -> HeuristicEvaluation {
    HeuristicEvaluation {
        groundedness: 0.0,
        relevance: 0.0,
        citation_validity: 0.0,
        confidence: 0.0,
        supported_sentences: 0,
        total_sentences: 0,
        evaluation: "The answer is empty.".to_string(),
    }
}

fn describe(
    declines_to_answer: bool,
    supported_count: usize,
    total_count: usize,
    relevance: f32,
    valid_citations: usize,
    citation_count: usize,
) -> String {
    if declines_to_answer {
        return "The answer says the indexed documents do not answer the question; confidence kept low."
            .to_string();
    }
    let support_phrase = if total_count == 0 {
        "The answer has no content words to check against the passages".to_string()
    } else {
        format!(
            "{supported_count} of {total_count} answer {} {} supported by the passages",
            if total_count == 1 {
                "sentence"
            } else {
                "sentences"
            },
            if total_count == 1 { "is" } else { "are" },
        )
    };
    let citation_phrase = if citation_count == 0 {
        "no citations".to_string()
    } else if valid_citations == citation_count {
        "citations valid".to_string()
    } else {
        format!(
            "{} of {citation_count} citations name no passage",
            citation_count - valid_citations
        )
    };
    format!("{support_phrase}; relevance {relevance:.2}; {citation_phrase}.")
}

fn ratio(part: usize, whole: usize) -> f32 {
    if whole == 0 {
        return 0.0;
    }
    (part as f32 / whole as f32).clamp(0.0, 1.0)
}

fn saturating_u32(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// One `[...]` citation marker: its byte range in the answer and the numbers it names
/// (`None` for a number too large to represent, which never names a passage).
struct Citation {
    start: usize,
    end: usize,
    numbers: Vec<Option<usize>>,
}

/// Finds markers like `[2]`, `[1, 3]` and `[1][2]`; bracketed text that is not only digits,
/// commas and spaces (e.g. `[citation needed]`) is left alone.
fn find_citations(text: &str) -> Vec<Citation> {
    let bytes = text.as_bytes();
    let mut citations = Vec::new();
    let mut search_from = 0usize;
    while let Some(relative_open) = bytes
        .get(search_from..)
        .and_then(|rest| rest.iter().position(|byte| *byte == b'['))
    {
        let body_start = search_from + relative_open + 1;
        let window_end = body_start
            .saturating_add(MAX_CITATION_BODY_BYTES + 1)
            .min(bytes.len());
        let close = bytes
            .get(body_start..window_end)
            .and_then(|window| window.iter().position(|byte| *byte == b']'))
            .map(|relative_close| body_start + relative_close);
        let Some(close) = close else {
            search_from = body_start;
            continue;
        };
        // '[' and ']' are ASCII, so both ends are char boundaries.
        let body = text.get(body_start..close).unwrap_or_default();
        let Some(numbers) = parse_citation_body(body) else {
            search_from = body_start;
            continue;
        };
        citations.push(Citation {
            start: body_start - 1,
            end: close + 1,
            numbers,
        });
        search_from = close + 1;
    }
    citations
}

fn parse_citation_body(body: &str) -> Option<Vec<Option<usize>>> {
    let only_list_characters = body
        .chars()
        .all(|character| character.is_ascii_digit() || character == ',' || character == ' ');
    if !only_list_characters {
        return None;
    }
    let numbers: Vec<Option<usize>> = body
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            if part.contains(' ') {
                return None;
            }
            part.parse::<usize>().ok()
        })
        .collect();
    if numbers.is_empty() {
        return None;
    }
    Some(numbers)
}

fn strip_citations(text: &str, citations: &[Citation]) -> String {
    let mut stripped = String::with_capacity(text.len());
    let mut copied_until = 0usize;
    for citation in citations {
        if let Some(between) = text.get(copied_until..citation.start) {
            stripped.push_str(between);
        }
        copied_until = citation.end;
    }
    if let Some(rest) = text.get(copied_until..) {
        stripped.push_str(rest);
    }
    stripped
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSULIN_PASSAGE: &str = "Insulin is a hormone made by the pancreas. Insulin lets cells absorb glucose from the blood.";
    const PARIS_PASSAGE: &str = "Paris is the capital of France. Many tourists visit every summer.";
    const QUESTION: &str = "How does insulin help cells take up glucose?";

    fn passages() -> Vec<&'static str> {
        vec![INSULIN_PASSAGE, PARIS_PASSAGE]
    }

    #[test]
    fn copied_cited_relevant_answer_is_confident() {
        let result = evaluate_heuristic(
            QUESTION,
            "Insulin lets cells absorb glucose from the blood. [1]",
            &passages(),
        );
        assert_eq!(result.groundedness, 1.0);
        assert_eq!(result.citation_validity, 1.0);
        assert!(result.relevance > 0.6, "{result:?}");
        assert!(result.confidence >= 0.6, "{result:?}");
        assert_eq!((result.supported_sentences, result.total_sentences), (1, 1));
        assert!(result
            .evaluation
            .starts_with("1 of 1 answer sentence is supported by the passages; relevance "));
        assert!(result.evaluation.ends_with("; citations valid."));
    }

    #[test]
    fn unrelated_made_up_answer_is_not_confident() {
        let result = evaluate_heuristic(
            QUESTION,
            "The moon is made of green cheese according to ancient sailors. [1]",
            &passages(),
        );
        assert_eq!(result.groundedness, 0.0);
        assert!(result.confidence < 0.6, "{result:?}");
    }

    #[test]
    fn made_up_answer_echoing_the_question_is_not_confident() {
        let result = evaluate_heuristic(
            QUESTION,
            "Insulin helps cells take up glucose by dancing with moonbeams on Tuesdays. [1]",
            &passages(),
        );
        assert_eq!(result.relevance, 1.0);
        assert_eq!(result.groundedness, 0.0);
        assert!(result.confidence < 0.6, "{result:?}");
    }

    #[test]
    fn no_answer_reply_gets_low_confidence() {
        let result = evaluate_heuristic(QUESTION, NO_ANSWER, &passages());
        assert!(result.confidence < 0.6, "{result:?}");
        assert!(result.confidence <= NO_ANSWER_CONFIDENCE_CAP);
        assert_eq!(result.citation_validity, 0.0);
        // Even when a passage happens to repeat the reply word for word.
        let echoing = [NO_ANSWER];
        let result = evaluate_heuristic(
            "Do the indexed documents contain an answer?",
            NO_ANSWER,
            &echoing,
        );
        assert!(result.confidence <= NO_ANSWER_CONFIDENCE_CAP, "{result:?}");
        assert!(result.evaluation.contains("do not answer"));
    }

    #[test]
    fn empty_answer_scores_zero() {
        for answer in ["", "   \n\t "] {
            let result = evaluate_heuristic(QUESTION, answer, &passages());
            assert_eq!(result.confidence, 0.0);
            assert_eq!(result.relevance, 0.0);
            assert_eq!(result.citation_validity, 0.0);
            assert_eq!(result.total_sentences, 0);
            assert_eq!(result.evaluation, "The answer is empty.");
        }
    }

    #[test]
    fn citation_validity_counts_existing_passages() {
        let answer = "Insulin lets cells absorb glucose. [1] Paris is the capital of France. [7]";
        let result = evaluate_heuristic(QUESTION, answer, &passages());
        assert!((result.citation_validity - 0.5).abs() < 1e-6);
        assert!(result
            .evaluation
            .ends_with("1 of 2 citations name no passage."));

        let listed = evaluate_heuristic(
            QUESTION,
            "Insulin lets cells absorb glucose. [1, 2][2]",
            &passages(),
        );
        assert_eq!(listed.citation_validity, 1.0);

        let zero = evaluate_heuristic(
            QUESTION,
            "Insulin lets cells absorb glucose. [0]",
            &passages(),
        );
        assert_eq!(zero.citation_validity, 0.0);

        let huge = evaluate_heuristic(
            QUESTION,
            "Insulin lets cells absorb glucose. [99999999999999999999999]",
            &passages(),
        );
        assert_eq!(huge.citation_validity, 0.0);

        let uncited =
            evaluate_heuristic(QUESTION, "Insulin lets cells absorb glucose.", &passages());
        assert_eq!(uncited.citation_validity, 0.0);
        assert!(uncited.evaluation.ends_with("; no citations."));
        assert_eq!(uncited.groundedness, 1.0);
    }

    #[test]
    fn citations_are_stripped_before_support_is_checked() {
        let answer =
            "Insulin[1] is a hormone made by the pancreas [1]. [citation needed] Whatever.";
        let result = evaluate_heuristic(QUESTION, answer, &passages());
        assert_eq!(result.citation_validity, 1.0);
        // "citation needed whatever" is not in any passage; the insulin sentence is.
        assert_eq!((result.supported_sentences, result.total_sentences), (1, 2));
        assert!((result.groundedness - 0.5).abs() < 1e-6);
        assert!(result
            .evaluation
            .starts_with("1 of 2 answer sentences are supported by the passages"));
    }

    #[test]
    fn find_citations_parses_lists_and_ignores_other_brackets() {
        let text = "a [1] b [2, 3] c [x] d [] e [ 4 ] f [5";
        let numbers: Vec<Vec<Option<usize>>> = find_citations(text)
            .into_iter()
            .map(|citation| citation.numbers)
            .collect();
        assert_eq!(
            numbers,
            vec![vec![Some(1)], vec![Some(2), Some(3)], vec![Some(4)]]
        );
        assert_eq!(
            strip_citations(text, &find_citations(text)),
            "a  b  c [x] d [] e  f [5"
        );
    }

    #[test]
    fn sentence_support_is_answer_term_coverage() {
        let answer_terms = content_terms("insulin lowers glucose");
        let passage_terms = content_terms("Insulin lowers blood glucose levels");
        assert_eq!(sentence_support(&answer_terms, &passage_terms), 1.0);
        let unrelated = content_terms("Paris is lovely");
        assert_eq!(sentence_support(&answer_terms, &unrelated), 0.0);
        assert_eq!(sentence_support(&[], &passage_terms), 0.0);
    }

    #[test]
    fn question_without_content_terms_gets_neutral_relevance() {
        let result = evaluate_heuristic(
            "What is it?",
            "Insulin lets cells absorb glucose. [1]",
            &passages(),
        );
        assert_eq!(result.relevance, NEUTRAL_RELEVANCE);
        let no_terms = evaluate_heuristic(QUESTION, "It is what it is. [1]", &passages());
        assert_eq!(no_terms.total_sentences, 0);
        assert_eq!(no_terms.relevance, 0.0);
        assert!(no_terms
            .evaluation
            .starts_with("The answer has no content words"));
    }

    #[test]
    fn no_passages_means_nothing_is_grounded() {
        let result = evaluate_heuristic(QUESTION, "Insulin lets cells absorb glucose. [1]", &[]);
        assert_eq!(result.groundedness, 0.0);
        assert_eq!(result.citation_validity, 0.0);
        assert!(result.confidence < 0.6);
    }

    #[test]
    fn unicode_and_huge_input_do_not_panic() {
        let passage = "Émoji 🎉 glücose ßtraße 東京。[1] [[[ ]]] ".repeat(3_000);
        let answer = "Émoji 🎉 glücose ßtraße 東京 [1] [2] [".repeat(500);
        let passage_list = [passage.as_str()];
        let result = evaluate_heuristic("glücose 🎉?", &answer, &passage_list);
        assert!((0.0..=1.0).contains(&result.confidence));
        assert!((result.citation_validity - 0.5).abs() < 1e-6);
        assert_eq!(result.groundedness, 1.0);
        let odd = evaluate_heuristic("🎉", "🎉 [", &["]"]);
        assert!((0.0..=1.0).contains(&odd.confidence));
    }
}
