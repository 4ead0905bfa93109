//! Extractive answer writer: picks the sentences of the retrieved passages that best match the
//! question and stitches them into a short answer with `[n]` citations, no language model needed.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use quarry_kit::text::{content_terms, split_sentences, term_coverage, NO_ANSWER};

/// At most this many sentences make up an answer.
pub const MAX_ANSWER_SENTENCES: usize = 3;

/// Two sentences whose term sets overlap more than this (Jaccard) are near-duplicates.
const NEAR_DUPLICATE_JACCARD: f32 = 0.7;
/// A sentence after the first must score at least this share of the best sentence's score.
const MIN_SHARE_OF_BEST_SCORE: f32 = 0.5;
/// Bonus for the best-ranked passage; later passages get `RANK_BONUS / (1 + rank)`.
const RANK_BONUS: f32 = 0.06;
/// Bonus scaled by how much of the question the passage title covers.
const TITLE_BONUS: f32 = 0.08;
/// Sentences with fewer words than this are slightly penalised.
const SHORT_SENTENCE_WORDS: usize = 4;
/// Sentences with more words than this are slightly penalised.
const LONG_SENTENCE_WORDS: usize = 60;
const SHORT_SENTENCE_FACTOR: f32 = 0.8;
const LONG_SENTENCE_FACTOR: f32 = 0.85;
/// How many matched terms the reasoning names at most.
const MAX_TERMS_IN_REASONING: usize = 6;
const ELLIPSIS: &str = "…";

/// One retrieved passage as shown to the reader.
#[derive(Debug, Clone)]
pub struct Passage {
    /// The `[n]` shown to the reader, 1-based.
    pub number: u32,
    pub doc_id: String,
    pub title: String,
    pub text: String,
}

/// An answer built from passage sentences.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractiveAnswer {
    pub answer: String,
    pub reasoning: String,
    /// Passage numbers actually cited, ascending, deduplicated.
    pub cited: Vec<u32>,
}

/// A passage sentence that could go into the answer.
struct Candidate<'passages> {
    passage_index: usize,
    passage_number: u32,
    position: usize,
    text: &'passages str,
    terms: HashSet<String>,
    matched_question_terms: Vec<String>,
    score: f32,
}

/// Builds an extractive answer to `question` from `passages` (best-ranked first).
///
/// Every passage text is split into sentences (the title only adds a bonus); each sentence is
/// scored by the IDF-weighted share of the question's content terms it contains, plus small
/// bonuses for earlier passages and matching titles, with a slight penalty for very short or
/// very long sentences. Up to [`MAX_ANSWER_SENTENCES`] sentences are picked greedily, skipping
/// near-duplicates, sentences scoring under half the best one, and sentences that would push
/// the answer (citations included) past `max_answer_chars`. The best sentence is always kept,
/// shortened on a word boundary with "…" if it alone is too long. `max_answer_chars == 0`
/// means no limit. When no sentence shares a content term with the question, the answer is
/// [`NO_ANSWER`] with no citations.
pub fn extractive_answer(
    question: &str,
    passages: &[Passage],
    max_answer_chars: usize,
) -> ExtractiveAnswer {
    let question_terms = distinct_in_order(content_terms(question));
    let mut candidates = collect_candidates(passages);
    let sentence_count = candidates.len();
    let read_summary = read_summary(passages.len(), sentence_count);
    if question_terms.is_empty() {
        return no_answer(format!(
            "{read_summary}; the question has no content terms to match, so no answer was extracted."
        ));
    }
    score_candidates(&mut candidates, &question_terms, passages);
    candidates.retain(|candidate| !candidate.matched_question_terms.is_empty());
    if candidates.is_empty() {
        return no_answer(format!(
            "{read_summary}; no sentence shares a content term with the question, so no answer was extracted."
        ));
    }
    candidates.sort_by(compare_best_first);

    let budget = if max_answer_chars == 0 {
        usize::MAX
    } else {
        max_answer_chars
    };
    let picked = pick_sentences(&candidates, budget);
    let mut ordered = picked;
    ordered.sort_by_key(|candidate| {
        (
            candidate.passage_number,
            candidate.passage_index,
            candidate.position,
        )
    });

    let mut truncated = false;
    let pieces: Vec<String> = ordered
        .iter()
        .map(|candidate| {
            let piece = cited_piece(candidate.text, candidate.passage_number);
            if character_count(&piece) <= budget {
                return piece;
            }
            truncated = true;
            let marker_chars = character_count(&citation_marker(candidate.passage_number));
            let text_budget = budget.saturating_sub(marker_chars + 1 + ELLIPSIS.chars().count());
            let shortened = truncate_on_word(candidate.text, text_budget);
            format!(
                "{shortened}{ELLIPSIS} {}",
                citation_marker(candidate.passage_number)
            )
        })
        .collect();

    let mut cited: Vec<u32> = ordered
        .iter()
        .map(|candidate| candidate.passage_number)
        .collect();
    cited.sort_unstable();
    cited.dedup();

    let reasoning = picked_reasoning(
        &read_summary,
        &ordered,
        &cited,
        &question_terms,
        question,
        truncated.then_some(max_answer_chars),
    );
    ExtractiveAnswer {
        answer: pieces.join(" "),
        reasoning,
        cited,
    }
}

fn no_answer(reasoning: String) -> ExtractiveAnswer {
    ExtractiveAnswer {
        answer: NO_ANSWER.to_string(),
        reasoning,
        cited: Vec::new(),
    }
}

fn collect_candidates(passages: &[Passage]) -> Vec<Candidate<'_>> {
    let mut candidates = Vec::new();
    for (passage_index, passage) in passages.iter().enumerate() {
        for (position, sentence) in split_sentences(&passage.text).into_iter().enumerate() {
            candidates.push(Candidate {
                passage_index,
                passage_number: passage.number,
                position,
                text: sentence,
                terms: content_terms(sentence).into_iter().collect(),
                matched_question_terms: Vec::new(),
                score: 0.0,
            });
        }
    }
    candidates
}

/// IDF-like weight of each question term across the candidate sentences: rare terms weigh
/// more. A term found in no sentence gets the largest weight, so it still counts as missing.
fn question_term_weights(
    question_terms: &[String],
    candidates: &[Candidate<'_>],
) -> HashMap<String, f32> {
    let sentence_total = candidates.len().max(1) as f32;
    question_terms
        .iter()
        .map(|term| {
            let document_frequency = candidates
                .iter()
                .filter(|candidate| candidate.terms.contains(term))
                .count()
                .max(1) as f32;
            let weight = (1.0 + sentence_total / document_frequency).ln();
            (term.clone(), weight)
        })
        .collect()
}

fn score_candidates(
    candidates: &mut [Candidate<'_>],
    question_terms: &[String],
    passages: &[Passage],
) {
    let weights = question_term_weights(question_terms, candidates);
    let total_weight: f32 = weights.values().sum();
    let title_coverages: Vec<f32> = passages
        .iter()
        .map(|passage| term_coverage(question_terms, &content_terms(&passage.title)))
        .collect();
    for candidate in candidates.iter_mut() {
        candidate.matched_question_terms = question_terms
            .iter()
            .filter(|term| candidate.terms.contains(*term))
            .cloned()
            .collect();
        if candidate.matched_question_terms.is_empty() || total_weight <= 0.0 {
            candidate.score = 0.0;
            continue;
        }
        let matched_weight: f32 = candidate
            .matched_question_terms
            .iter()
            .filter_map(|term| weights.get(term))
            .sum();
        let weighted_coverage = matched_weight / total_weight;
        let rank_bonus = RANK_BONUS / (1.0 + candidate.passage_index as f32);
        let title_bonus = TITLE_BONUS
            * title_coverages
                .get(candidate.passage_index)
                .copied()
                .unwrap_or(0.0);
        candidate.score =
            weighted_coverage * length_factor(candidate.text) + rank_bonus + title_bonus;
    }
}

fn length_factor(sentence: &str) -> f32 {
    let word_count = sentence.split_whitespace().count();
    if word_count < SHORT_SENTENCE_WORDS {
        return SHORT_SENTENCE_FACTOR;
    }
    if word_count > LONG_SENTENCE_WORDS {
        return LONG_SENTENCE_FACTOR;
    }
    1.0
}

fn compare_best_first(left: &Candidate<'_>, right: &Candidate<'_>) -> Ordering {
    right
        .score
        .total_cmp(&left.score)
        .then(left.passage_index.cmp(&right.passage_index))
        .then(left.position.cmp(&right.position))
}

/// Greedy pick from candidates sorted best first; the first one is always taken.
fn pick_sentences<'candidates, 'passages>(
    candidates: &'candidates [Candidate<'passages>],
    budget: usize,
) -> Vec<&'candidates Candidate<'passages>> {
    let mut picked: Vec<&Candidate<'passages>> = Vec::new();
    let Some(best) = candidates.first() else {
        return picked;
    };
    picked.push(best);
    let mut used_chars = character_count(&cited_piece(best.text, best.passage_number)).min(budget);
    let minimum_score = best.score * MIN_SHARE_OF_BEST_SCORE;
    for candidate in candidates.iter().skip(1) {
        if picked.len() >= MAX_ANSWER_SENTENCES || candidate.score < minimum_score {
            break;
        }
        let duplicates_picked = picked
            .iter()
            .any(|chosen| jaccard(&chosen.terms, &candidate.terms) > NEAR_DUPLICATE_JACCARD);
        if duplicates_picked {
            continue;
        }
        let piece_chars = character_count(&cited_piece(candidate.text, candidate.passage_number));
        let needed = used_chars.saturating_add(1).saturating_add(piece_chars);
        if needed > budget {
            continue;
        }
        used_chars = needed;
        picked.push(candidate);
    }
    picked
}

fn jaccard(left: &HashSet<String>, right: &HashSet<String>) -> f32 {
    let union_size = left.union(right).count();
    if union_size == 0 {
        return 1.0;
    }
    left.intersection(right).count() as f32 / union_size as f32
}

fn citation_marker(passage_number: u32) -> String {
    format!("[{passage_number}]")
}

fn cited_piece(sentence: &str, passage_number: u32) -> String {
    format!("{sentence} {}", citation_marker(passage_number))
}

fn character_count(text: &str) -> usize {
    text.chars().count()
}

/// Cuts `text` to at most `max_chars` characters, preferring to end on a whole word and
/// dropping trailing spaces and clause punctuation. Never returns an empty string for a
/// non-empty `text`: with no room at all it keeps the first character.
fn truncate_on_word(text: &str, max_chars: usize) -> &str {
    let cut_byte = text
        .char_indices()
        .nth(max_chars.max(1))
        .map(|(byte_index, _)| byte_index)
        .unwrap_or(text.len());
    let Some(prefix) = text.get(..cut_byte) else {
        return text;
    };
    let ends_on_word = text
        .get(cut_byte..)
        .is_none_or(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace));
    let word_prefix = if ends_on_word {
        prefix
    } else {
        match prefix.rfind(char::is_whitespace) {
            Some(space_byte) if !prefix[..space_byte].trim().is_empty() => &prefix[..space_byte],
            _ => prefix,
        }
    };
    let tidy = word_prefix.trim_end_matches(|character: char| {
        character.is_whitespace() || matches!(character, ',' | ';' | ':' | '-' | '–' | '—')
    });
    if tidy.is_empty() {
        return prefix;
    }
    tidy
}

fn read_summary(passage_count: usize, sentence_count: usize) -> String {
    format!(
        "Read {passage_count} {} ({sentence_count} {})",
        plural(passage_count, "passage", "passages"),
        plural(sentence_count, "sentence", "sentences"),
    )
}

fn plural<'word>(count: usize, singular: &'word str, plural_form: &'word str) -> &'word str {
    if count == 1 {
        return singular;
    }
    plural_form
}

fn picked_reasoning(
    read_summary: &str,
    ordered: &[&Candidate<'_>],
    cited: &[u32],
    question_terms: &[String],
    question: &str,
    truncated_to: Option<usize>,
) -> String {
    let matched: HashSet<&str> = ordered
        .iter()
        .flat_map(|candidate| candidate.matched_question_terms.iter())
        .map(String::as_str)
        .collect();
    let surface_forms = surface_forms(question);
    let matched_words: Vec<String> = question_terms
        .iter()
        .filter(|term| matched.contains(term.as_str()))
        .take(MAX_TERMS_IN_REASONING)
        .map(|term| {
            let shown = surface_forms.get(term).unwrap_or(term);
            format!("\"{shown}\"")
        })
        .collect();
    let passage_list: Vec<String> = cited
        .iter()
        .map(|number| citation_marker(*number))
        .collect();
    let sentence_total = ordered.len();
    let mut reasoning = format!(
        "{read_summary}; picked {sentence_total} {} from {} {} that {} {}.",
        plural(sentence_total, "sentence", "sentences"),
        plural(cited.len(), "passage", "passages"),
        passage_list.join(", "),
        plural(sentence_total, "matches", "match"),
        matched_words.join(", "),
    );
    if let Some(limit) = truncated_to {
        reasoning.push_str(&format!(
            " The best sentence was shortened to fit {limit} characters."
        ));
    }
    reasoning
}

/// Maps each content term of the question back to the lowercased word it came from, so the
/// reasoning can say "glucose" rather than the stem "glucos".
fn surface_forms(question: &str) -> HashMap<String, String> {
    let mut forms = HashMap::new();
    let words = question.split(|character: char| {
        !character.is_alphanumeric() && character != '\'' && character != '’'
    });
    for word in words {
        let terms = content_terms(word);
        let [term] = terms.as_slice() else {
            continue;
        };
        forms
            .entry(term.clone())
            .or_insert_with(|| word.to_lowercase());
    }
    forms
}

fn distinct_in_order(terms: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    terms
        .into_iter()
        .filter(|term| seen.insert(term.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(number: u32, title: &str, text: &str) -> Passage {
        Passage {
            number,
            doc_id: format!("doc-{number}"),
            title: title.to_string(),
            text: text.to_string(),
        }
    }

    fn diabetes_passages() -> Vec<Passage> {
        vec![
            passage(
                1,
                "Insulin",
                "Insulin is a hormone made by the pancreas. Insulin lets cells absorb glucose from the blood. The weather was nice that day.",
            ),
            passage(
                2,
                "Travel",
                "Paris is the capital of France. Many tourists visit every summer.",
            ),
            passage(
                3,
                "Diabetes",
                "In diabetes the body cannot regulate blood glucose properly. Patients often check glucose levels daily.",
            ),
        ]
    }

    #[test]
    fn answers_with_matching_sentences_and_citations() {
        let result = extractive_answer(
            "How does insulin affect glucose in the blood?",
            &diabetes_passages(),
            600,
        );
        assert!(result
            .answer
            .contains("Insulin lets cells absorb glucose from the blood. [1]"));
        assert!(!result.answer.contains("Paris"));
        assert!(!result.answer.contains("weather"));
        assert!(!result.cited.contains(&2));
        assert!(result.cited.contains(&1));
        let mut sorted = result.cited.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(result.cited, sorted);
        assert!(result
            .reasoning
            .starts_with("Read 3 passages (7 sentences); picked "));
        assert!(result.reasoning.contains("\"insulin\""));
        assert!(result.reasoning.contains("\"glucose\""));
    }

    #[test]
    fn no_overlap_gives_the_no_answer_reply() {
        let result = extractive_answer("Who won the chess olympiad?", &diabetes_passages(), 600);
        assert_eq!(result.answer, NO_ANSWER);
        assert!(result.cited.is_empty());
        assert!(result.reasoning.contains("Read 3 passages (7 sentences)"));
    }

    #[test]
    fn degenerate_inputs_give_the_no_answer_reply() {
        let empty = extractive_answer("", &diabetes_passages(), 100);
        assert_eq!(empty.answer, NO_ANSWER);
        assert!(empty.cited.is_empty());
        let stop_words_only = extractive_answer("What is it?", &diabetes_passages(), 100);
        assert_eq!(stop_words_only.answer, NO_ANSWER);
        let no_passages = extractive_answer("insulin", &[], 100);
        assert_eq!(no_passages.answer, NO_ANSWER);
        assert_eq!(
            no_passages.reasoning,
            "Read 0 passages (0 sentences); no sentence shares a content term with the question, so no answer was extracted."
        );
        let blank_passages = extractive_answer("insulin", &[passage(1, "", "  \n ")], 0);
        assert_eq!(blank_passages.answer, NO_ANSWER);
    }

    #[test]
    fn rare_matching_terms_outweigh_common_ones() {
        let passages = vec![passage(
            1,
            "",
            "Glucose is sugar found in fruit. Glucose circulates in the blood stream. Glucose fuels the brain at rest. The pancreas secretes insulin from beta cells.",
        )];
        let result = extractive_answer("insulin glucose", &passages, 60);
        assert_eq!(
            result.answer,
            "The pancreas secretes insulin from beta cells. [1]"
        );
    }

    #[test]
    fn orders_picked_sentences_by_passage_then_position() {
        let passages = vec![
            passage(2, "", "Zinc supports immune function in adults."),
            passage(
                1,
                "",
                "Vitamin unrelated filler text here. Zinc deficiency weakens immune response.",
            ),
        ];
        let result = extractive_answer("zinc immune", &passages, 0);
        assert_eq!(
            result.answer,
            "Zinc deficiency weakens immune response. [1] Zinc supports immune function in adults. [2]"
        );
        assert_eq!(result.cited, vec![1, 2]);
    }

    #[test]
    fn skips_near_duplicates_and_prefers_better_ranked_passage() {
        let passages = vec![
            passage(1, "", "Insulin lowers blood glucose quickly."),
            passage(2, "", "Insulin lowers blood glucose quickly!"),
        ];
        let result = extractive_answer("insulin glucose", &passages, 0);
        assert_eq!(result.answer, "Insulin lowers blood glucose quickly. [1]");
        assert_eq!(result.cited, vec![1]);
    }

    #[test]
    fn title_match_breaks_ties_between_passages() {
        let passages = vec![
            passage(
                1,
                "Cooking",
                "Salt raises the boiling point of water a little.",
            ),
            passage(
                2,
                "Boiling point of water",
                "Adding salt raises the boiling point of water.",
            ),
        ];
        let result = extractive_answer("boiling point water", &passages, 0);
        assert_eq!(
            result.answer,
            "Adding salt raises the boiling point of water. [2]"
        );
        assert_eq!(result.cited, vec![2]);
    }

    #[test]
    fn leaves_out_sentences_scoring_under_half_the_best() {
        let passages = vec![
            passage(1, "", "Insulin is a peptide hormone made in the pancreas."),
            passage(2, "", "Dr. Banting discovered insulin in 1921."),
        ];
        let result = extractive_answer("Who discovered insulin?", &passages, 0);
        assert_eq!(result.answer, "Dr. Banting discovered insulin in 1921. [2]");
        assert_eq!(result.cited, vec![2]);
    }

    #[test]
    fn picks_at_most_three_sentences() {
        let text = "Iron carries oxygen in blood. Iron deficiency causes fatigue and pallor. Iron is absorbed in the gut daily. Iron rich foods include spinach and beans. Iron overload damages the liver badly.";
        let result = extractive_answer("iron", &[passage(1, "", text)], 0);
        assert_eq!(result.answer.matches("[1]").count(), MAX_ANSWER_SENTENCES);
        assert!(result
            .reasoning
            .contains("picked 3 sentences from passage [1] that match \"iron\"."));
    }

    #[test]
    fn respects_the_character_budget() {
        let text = "Iron carries oxygen in blood. Iron deficiency causes fatigue and pallor. Iron is absorbed in the gut daily.";
        let result = extractive_answer("iron", &[passage(1, "", text)], 40);
        assert!(result.answer.chars().count() <= 40, "{}", result.answer);
        assert_eq!(result.answer, "Iron carries oxygen in blood. [1]");
        let roomier = extractive_answer("iron", &[passage(1, "", text)], 80);
        assert_eq!(
            roomier.answer,
            "Iron carries oxygen in blood. [1] Iron deficiency causes fatigue and pallor. [1]"
        );
        assert_eq!(roomier.answer.chars().count(), 80);
        assert_eq!(roomier.cited, vec![1]);
    }

    #[test]
    fn truncates_an_overlong_best_sentence_on_a_word() {
        let text = "Ferritin stores iron inside cells and releases it when the body needs more for hemoglobin production.";
        let result = extractive_answer("ferritin iron", &[passage(7, "", text)], 30);
        assert_eq!(result.answer, "Ferritin stores iron… [7]");
        assert!(result.answer.chars().count() <= 30);
        assert_eq!(result.cited, vec![7]);
        assert!(result.reasoning.contains("shortened to fit 30 characters"));
    }

    #[test]
    fn truncation_is_safe_with_unicode_and_tiny_budgets() {
        let text = "Ünïcödé 🎉🎉🎉 glücose ßtraße 東京東京東京 and more words after that.";
        for budget in 1..80 {
            let result = extractive_answer("glücose", &[passage(1, "", text)], budget);
            assert!(result.answer.ends_with("[1]"), "{}", result.answer);
            assert_eq!(result.cited, vec![1]);
        }
        let no_spaces = "東京東京東京東京東京東京東京東京東京東京東京東京";
        let result = extractive_answer(
            "東京東京東京東京東京東京東京東京東京東京東京東京",
            &[passage(1, "", no_spaces)],
            10,
        );
        assert_eq!(result.answer, "東京東京東… [1]");
    }

    #[test]
    fn truncate_on_word_keeps_whole_words() {
        assert_eq!(truncate_on_word("alpha beta gamma", 12), "alpha beta");
        assert_eq!(truncate_on_word("alpha beta, gamma", 11), "alpha beta");
        assert_eq!(truncate_on_word("alphabet", 3), "alp");
        assert_eq!(truncate_on_word("alphabet", 0), "a");
        assert_eq!(truncate_on_word("ab", 10), "ab");
        assert_eq!(truncate_on_word("", 10), "");
    }

    #[test]
    fn reasoning_names_surface_words_not_stems() {
        let passages = vec![passage(4, "", "Studies show glucose rises after meals.")];
        let result = extractive_answer("What do studies say about glucose?", &passages, 0);
        assert_eq!(
            result.reasoning,
            "Read 1 passage (1 sentence); picked 1 sentence from passage [4] that matches \"studies\", \"glucose\"."
        );
    }

    #[test]
    fn huge_input_does_not_panic() {
        let text = "Émoji 🎉 glucose sentence number one. ".repeat(5_000);
        let passages: Vec<Passage> = (1..=4).map(|number| passage(number, "🎉", &text)).collect();
        let result = extractive_answer("glucose 🎉", &passages, 200);
        assert!(result.answer.chars().count() <= 200);
        assert_eq!(result.cited, vec![1]);
    }
}
