//! Query-type classification by weighted cue scoring.
//!
//! Algorithm ([`classify_question`]):
//! 1. Normalise the question into clauses of lowercase tokens
//!    ([`super::normalize::normalize_question`]).
//! 2. For every clause, find the longest matching cue of
//!    [`super::cues::PREFIX_CUES`] and add its weight to its type (all cues tied
//!    at that length count). The first clause counts fully, later clauses
//!    count [`LATER_CLAUSE_FACTOR`] (questions often end with the real ask:
//!    "my dog ate chocolate, what do I do").
//! 3. Add the weight of every [`super::cues::ANYWHERE_CUES`] entry found
//!    anywhere in the question (each at most once).
//! 4. The highest score wins; exact ties go to the type of the first prefix
//!    match, else to the first type in [`QueryType::ALL`]. With no cue at all
//!    the answer is factual/"lookup" with confidence [`NO_CUE_CONFIDENCE`].
//! 5. The intent is that of the strongest single cue of the winning type.

use super::cues::{Cue, ANYWHERE_CUES, PREFIX_CUES};
use super::normalize::normalize_question;
use super::{Classification, QueryType};

/// Weight multiplier for prefix cues found at the start of a non-first clause.
pub const LATER_CLAUSE_FACTOR: f32 = 0.8;
/// Confidence reported when no cue fires and factual is chosen by default.
pub const NO_CUE_CONFIDENCE: f32 = 0.2;

/// Accumulated evidence for the four query types.
#[derive(Debug, Clone, Default)]
struct Scoreboard {
    scores: [f32; 4],
    /// Strongest contributing cue (weighted) and its intent, per type.
    strongest_intent: [Option<(f32, &'static str)>; 4],
    first_prefix_type: Option<QueryType>,
}

impl Scoreboard {
    fn add(&mut self, cue: &Cue, factor: f32) {
        let index = cue.query_type.index();
        let contribution = cue.weight * factor;
        self.scores[index] += contribution;
        let is_stronger =
            self.strongest_intent[index].is_none_or(|(best_weight, _)| contribution > best_weight);
        if is_stronger {
            self.strongest_intent[index] = Some((contribution, cue.intent));
        }
    }
}

/// Does `pattern` (space separated, `*` = any one word) match `tokens` at `position`?
fn pattern_matches_at(pattern: &str, tokens: &[String], position: usize) -> bool {
    for (offset, pattern_word) in (position..).zip(pattern.split(' ')) {
        let Some(token) = tokens.get(offset) else {
            return false;
        };
        if pattern_word != "*" && pattern_word != token {
            return false;
        }
    }
    true
}

fn pattern_length(pattern: &str) -> usize {
    pattern.split(' ').count()
}

fn pattern_occurs(pattern: &str, tokens: &[String]) -> bool {
    (0..tokens.len()).any(|position| pattern_matches_at(pattern, tokens, position))
}

/// Adds the longest prefix cue(s) of one clause to the scoreboard.
fn score_clause_prefix(clause: &[String], factor: f32, scoreboard: &mut Scoreboard) {
    let matching: Vec<&Cue> = PREFIX_CUES
        .iter()
        .filter(|cue| pattern_matches_at(cue.pattern, clause, 0))
        .collect();
    let Some(longest) = matching.iter().map(|cue| pattern_length(cue.pattern)).max() else {
        return;
    };
    for cue in matching {
        if pattern_length(cue.pattern) != longest {
            continue;
        }
        scoreboard.add(cue, factor);
        if scoreboard.first_prefix_type.is_none() {
            scoreboard.first_prefix_type = Some(cue.query_type);
        }
    }
}

fn build_scoreboard(question: &str) -> Scoreboard {
    let normalized = normalize_question(question);
    let mut scoreboard = Scoreboard::default();
    for (clause_index, clause) in normalized.clauses.iter().enumerate() {
        let factor = if clause_index == 0 {
            1.0
        } else {
            LATER_CLAUSE_FACTOR
        };
        score_clause_prefix(clause, factor, &mut scoreboard);
    }
    for cue in ANYWHERE_CUES {
        if pattern_occurs(cue.pattern, &normalized.all_tokens) {
            scoreboard.add(cue, 1.0);
        }
    }
    scoreboard
}

/// Picks the winning type; ties go to the first prefix type, then to `ALL` order.
fn pick_winner(scoreboard: &Scoreboard) -> QueryType {
    let best_score = scoreboard.scores.iter().copied().fold(0.0_f32, f32::max);
    let is_tied_best = |query_type: QueryType| scoreboard.scores[query_type.index()] >= best_score;
    if let Some(prefix_type) = scoreboard.first_prefix_type {
        if is_tied_best(prefix_type) {
            return prefix_type;
        }
    }
    QueryType::ALL
        .into_iter()
        .find(|query_type| is_tied_best(*query_type))
        .unwrap_or(QueryType::Factual)
}

/// Confidence in `0..=1` from the scores:
/// `0.5 * (best - second) / best + 0.5 * best / (best + 2)`.
/// The first term is the relative margin over the runner-up, the second grows
/// with the absolute amount of evidence (3 points of evidence give 0.3).
pub fn confidence_from_scores(scores: &[f32; 4]) -> f32 {
    let mut sorted = *scores;
    sorted.sort_by(|left, right| right.total_cmp(left));
    let best = sorted[0];
    let second = sorted[1];
    if best <= 0.0 {
        return NO_CUE_CONFIDENCE;
    }
    let margin = (best - second) / best;
    let evidence = best / (best + 2.0);
    (0.5 * margin + 0.5 * evidence).clamp(0.0, 1.0)
}

/// The intent reported for a type when no cue of that type fired.
pub fn default_intent(query_type: QueryType) -> &'static str {
    match query_type {
        QueryType::Factual => "lookup",
        QueryType::Procedural => "how_to",
        QueryType::Analytical => "explanation",
        QueryType::Creative => "generation",
    }
}

/// Classifies a question; see the module documentation for the algorithm.
pub fn classify_question(question: &str) -> Classification {
    let scoreboard = build_scoreboard(question);
    let query_type = pick_winner(&scoreboard);
    let intent = scoreboard.strongest_intent[query_type.index()]
        .map_or(default_intent(query_type), |(_, intent)| intent);
    Classification {
        query_type,
        confidence: confidence_from_scores(&scoreboard.scores),
        intent: intent.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn type_of(question: &str) -> QueryType {
        classify_question(question).query_type
    }

    #[test]
    fn creative_requests() {
        assert_eq!(type_of("Write a haiku about autumn"), QueryType::Creative);
        assert_eq!(type_of("give me 5 names for a bakery"), QueryType::Creative);
        assert_eq!(type_of("brainstorm slogans for a gym"), QueryType::Creative);
        assert_eq!(
            classify_question("whats a good name for my cat").intent,
            "naming"
        );
    }

    #[test]
    fn procedural_requests() {
        assert_eq!(type_of("how to reset my router"), QueryType::Procedural);
        assert_eq!(
            type_of("How do I install Rust on Linux?"),
            QueryType::Procedural
        );
        assert_eq!(
            type_of("what are the steps to get a passport"),
            QueryType::Procedural
        );
        assert_eq!(
            type_of("is there a way to undo a git commit"),
            QueryType::Procedural
        );
        assert_eq!(
            type_of("my sink is clogged what should i do"),
            QueryType::Procedural
        );
    }

    #[test]
    fn factual_hard_cases() {
        assert_eq!(
            type_of("how many legs does a spider have"),
            QueryType::Factual
        );
        assert_eq!(
            type_of("how do you say thank you in french"),
            QueryType::Factual
        );
        assert_eq!(
            type_of("why is it called the big apple"),
            QueryType::Factual
        );
        assert_eq!(type_of("Explain what SQL stands for"), QueryType::Factual);
        assert_eq!(type_of("can cats eat chocolate"), QueryType::Factual);
        assert_eq!(
            type_of("which is heavier, a kilo of lead or iron"),
            QueryType::Factual
        );
        assert_eq!(type_of("capital of France"), QueryType::Factual);
        assert_eq!(classify_question("how old is the sun").intent, "quantity");
    }

    #[test]
    fn analytical_hard_cases() {
        assert_eq!(type_of("why is the sky blue"), QueryType::Analytical);
        assert_eq!(
            type_of("explain why inflation rises"),
            QueryType::Analytical
        );
        assert_eq!(
            type_of("is python better than java for scripting"),
            QueryType::Analytical
        );
        assert_eq!(
            type_of("which is healthier, rice or pasta"),
            QueryType::Analytical
        );
        assert_eq!(
            type_of("react vs vue for a small app"),
            QueryType::Analytical
        );
        assert_eq!(type_of("how does a jet engine work"), QueryType::Analytical);
        assert_eq!(
            type_of("what caused the great depression"),
            QueryType::Analytical
        );
        assert_eq!(classify_question("rust vs go").intent, "comparison");
    }

    #[test]
    fn confidence_is_bounded_and_reflects_margin() {
        let clear = classify_question("Write a poem about the sea");
        let vague = classify_question("zebra");
        assert!(clear.confidence > vague.confidence);
        assert!((0.0..=1.0).contains(&clear.confidence));
        assert_eq!(vague.query_type, QueryType::Factual);
        assert_eq!(vague.confidence, NO_CUE_CONFIDENCE);
    }

    #[test]
    fn weird_input_defaults_to_factual() {
        let long_input = "why ".repeat(10_000);
        for text in [
            "",
            "   ",
            "\"unterminated",
            "日本語のテキスト",
            "🙂🙂 WHAT",
            long_input.as_str(),
        ] {
            let classification = classify_question(text);
            assert!((0.0..=1.0).contains(&classification.confidence));
            assert!(!classification.intent.is_empty());
        }
        assert_eq!(type_of(""), QueryType::Factual);
    }
}
