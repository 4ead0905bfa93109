//! Question complexity estimate in `0..=1`, used to decide how much retrieval
//! and reasoning effort a question deserves.
//!
//! Formula ([`score`]), every component capped at 1:
//!
//! ```text
//! length     = words / 30
//! clauses    = (conjunctions + commas + semicolons) / 4
//! entities   = entity_count / 5
//! reasoning  = comparison_or_causal_cues / 2
//! multi_part = (question_parts - 1) / 2
//!
//! complexity = 0.35 * length + 0.20 * clauses + 0.15 * entities
//!            + 0.15 * reasoning + 0.15 * multi_part
//! ```
//!
//! Conjunctions are "and", "or", "but", "versus"/"vs", "while", "whereas",
//! "although", "because", "if". Question parts are the number of `?` marks, or
//! one plus the number of conjunctions/commas directly followed by a question
//! word ("..., and why ..."), whichever is larger. A three-word lookup such as
//! "capital of France" scores about 0.07; a long multi-part comparison scores
//! well above 0.6.

use super::Entity;

const LENGTH_WEIGHT: f32 = 0.35;
const CLAUSE_WEIGHT: f32 = 0.20;
const ENTITY_WEIGHT: f32 = 0.15;
const REASONING_WEIGHT: f32 = 0.15;
const MULTI_PART_WEIGHT: f32 = 0.15;

const WORDS_FOR_FULL_LENGTH: f32 = 30.0;
const CLAUSE_MARKERS_FOR_FULL: f32 = 4.0;
const ENTITIES_FOR_FULL: f32 = 5.0;
const REASONING_CUES_FOR_FULL: f32 = 2.0;
const EXTRA_PARTS_FOR_FULL: f32 = 2.0;

const CONJUNCTIONS: &[&str] = &[
    "and", "or", "but", "versus", "vs", "while", "whereas", "although", "because", "if",
];

const REASONING_CUES: &[&str] = &[
    "compare",
    "compared",
    "comparison",
    "versus",
    "vs",
    "better",
    "worse",
    "difference",
    "differ",
    "than",
    "tradeoff",
    "tradeoffs",
    "trade-off",
    "trade-offs",
    "pros",
    "cons",
    "why",
    "because",
    "cause",
    "caused",
    "causes",
    "effect",
    "effects",
    "impact",
    "affect",
    "affects",
    "consequences",
    "implications",
    "influence",
    "led",
];

const QUESTION_WORDS: &[&str] = &[
    "what", "why", "how", "when", "where", "which", "who", "whose", "should", "is", "are", "can",
    "does", "do",
];

/// Lowercase words with surrounding punctuation trimmed.
fn lowercase_words(question: &str) -> Vec<String> {
    question
        .split_whitespace()
        .map(|word| {
            word.trim_matches(|c: char| !c.is_alphanumeric() && c != '-')
                .to_lowercase()
        })
        .filter(|word| !word.is_empty())
        .collect()
}

fn ratio(count: usize, full_at: f32) -> f32 {
    (count as f32 / full_at).min(1.0)
}

fn count_clause_markers(question: &str, words: &[String]) -> usize {
    let conjunctions = words
        .iter()
        .filter(|word| CONJUNCTIONS.contains(&word.as_str()))
        .count();
    let separators = question.chars().filter(|c| matches!(c, ',' | ';')).count();
    conjunctions + separators
}

fn count_reasoning_cues(words: &[String]) -> usize {
    words
        .iter()
        .filter(|word| REASONING_CUES.contains(&word.as_str()))
        .count()
}

/// Number of distinct questions asked ("what is X, and why does Y" = 2).
fn count_question_parts(question: &str, words: &[String]) -> usize {
    let question_marks = question.matches('?').count();
    let raw_words: Vec<&str> = question.split_whitespace().collect();
    let mut joined_questions = 0;
    for (index, pair) in words.windows(2).enumerate() {
        let joins = CONJUNCTIONS.contains(&pair[0].as_str())
            || raw_words.get(index).is_some_and(|raw| raw.ends_with(','));
        if joins && QUESTION_WORDS.contains(&pair[1].as_str()) {
            joined_questions += 1;
        }
    }
    question_marks.max(1 + joined_questions)
}

/// Complexity of a question in `0..=1`; see the module documentation.
pub fn score(question: &str, entities: &[Entity]) -> f32 {
    let words = lowercase_words(question);
    if words.is_empty() {
        return 0.0;
    }
    let length = ratio(words.len(), WORDS_FOR_FULL_LENGTH);
    let clauses = ratio(
        count_clause_markers(question, &words),
        CLAUSE_MARKERS_FOR_FULL,
    );
    let entity_share = ratio(entities.len(), ENTITIES_FOR_FULL);
    let reasoning = ratio(count_reasoning_cues(&words), REASONING_CUES_FOR_FULL);
    let extra_parts = count_question_parts(question, &words).saturating_sub(1);
    let multi_part = ratio(extra_parts, EXTRA_PARTS_FOR_FULL);
    let total = LENGTH_WEIGHT * length
        + CLAUSE_WEIGHT * clauses
        + ENTITY_WEIGHT * entity_share
        + REASONING_WEIGHT * reasoning
        + MULTI_PART_WEIGHT * multi_part;
    total.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::super::extract_entities;
    use super::*;

    fn complexity_of(question: &str) -> f32 {
        score(question, &extract_entities(question))
    }

    #[test]
    fn short_lookup_is_simple() {
        assert!(complexity_of("capital of France") < 0.3);
        assert!(complexity_of("who wrote Hamlet") < 0.3);
    }

    #[test]
    fn long_multi_part_comparison_is_complex() {
        let question = "Compare PostgreSQL and MongoDB for an event-sourced order system, \
                        and why would one be better than the other for write-heavy workloads, \
                        and what are the trade-offs in cost and operations?";
        assert!(complexity_of(question) > 0.6);
    }

    #[test]
    fn complexity_increases_with_structure() {
        let simple = complexity_of("what is rust");
        let medium = complexity_of("is rust better than go for network services");
        let hard = complexity_of(
            "is rust better than go for network services, and why do teams at Google and AWS \
             pick one over the other, and what does it cost?",
        );
        assert!(simple < medium && medium < hard);
    }

    #[test]
    fn bounded_and_panic_free() {
        let long_input = "why and, ".repeat(5_000);
        for text in [
            "",
            "   ",
            "\"unterminated",
            "日本語のテキスト",
            "🙂🙂 WHAT",
            long_input.as_str(),
        ] {
            let value = complexity_of(text);
            assert!((0.0..=1.0).contains(&value));
        }
        assert_eq!(complexity_of(""), 0.0);
    }
}
