//! Entity extraction: quoted phrases, capitalised (proper-noun) spans,
//! acronyms, numbers and dates, reported with byte offsets into the question.
//!
//! Every detector proposes candidates; overlaps are then resolved greedily,
//! longest candidate first, ties broken by kind specificity
//! (quoted > date > acronym > number > proper). All offsets come from
//! `char_indices` or from ASCII bytes, so slicing never splits a character.

use super::entity_dates::{find_month_dates, find_numbers_and_years, find_numeric_dates};
use super::entity_words::{find_acronyms_and_proper_spans, split_words};
use super::{Entity, EntityKind};

/// A proposed entity span before overlap resolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) kind: EntityKind,
}

fn kind_priority(kind: EntityKind) -> u8 {
    match kind {
        EntityKind::Quoted => 0,
        EntityKind::Date => 1,
        EntityKind::Acronym => 2,
        EntityKind::Number => 3,
        EntityKind::Proper => 4,
    }
}

/// Extracts non-overlapping entities ordered by start offset.
pub fn extract(question: &str) -> Vec<Entity> {
    let mut candidates = Vec::new();
    find_quoted(question, &mut candidates);
    find_numbers_and_years(question, &mut candidates);
    find_numeric_dates(question, &mut candidates);
    let words = split_words(question);
    find_month_dates(question, &words, &mut candidates);
    find_acronyms_and_proper_spans(question, &words, &mut candidates);
    resolve_overlaps(question, candidates)
}

fn resolve_overlaps(question: &str, mut candidates: Vec<Candidate>) -> Vec<Entity> {
    candidates.sort_by_key(|candidate| {
        let length = candidate.end - candidate.start;
        (
            std::cmp::Reverse(length),
            kind_priority(candidate.kind),
            candidate.start,
        )
    });
    let mut occupied = vec![false; question.len()];
    let mut accepted = Vec::new();
    for candidate in candidates {
        let Some(text) = question.get(candidate.start..candidate.end) else {
            continue;
        };
        if text.is_empty()
            || occupied[candidate.start..candidate.end]
                .iter()
                .any(|&taken| taken)
        {
            continue;
        }
        occupied[candidate.start..candidate.end].fill(true);
        accepted.push(Entity {
            text: text.to_string(),
            kind: candidate.kind,
            start: candidate.start,
            end: candidate.end,
        });
    }
    accepted.sort_by_key(|entity| entity.start);
    accepted
}

fn closing_quote_for(opening: char) -> Option<&'static [char]> {
    match opening {
        '"' => Some(&['"']),
        '“' => Some(&['”', '"']),
        '\'' => Some(&['\'']),
        '‘' => Some(&['’', '\'']),
        _ => None,
    }
}

/// Finds `"..."`, `“...”`, `'...'` and `‘...’`. A single quote only opens after
/// a non-alphanumeric character and only closes before one, so apostrophes in
/// "don't" or "Warriors' offense" are not mistaken for quotes.
fn find_quoted(question: &str, candidates: &mut Vec<Candidate>) {
    let characters: Vec<(usize, char)> = question.char_indices().collect();
    let is_word_char = |position: usize| {
        characters
            .get(position)
            .is_some_and(|(_, c)| c.is_alphanumeric())
    };
    let mut exhausted_openings: Vec<char> = Vec::new();
    let mut position = 0;
    while position < characters.len() {
        let (open_offset, opening) = characters[position];
        let Some(closings) = closing_quote_for(opening) else {
            position += 1;
            continue;
        };
        let is_single = matches!(opening, '\'' | '‘');
        let opens = !(is_single && position > 0 && is_word_char(position - 1));
        if !opens || exhausted_openings.contains(&opening) {
            position += 1;
            continue;
        }
        let closing_position = (position + 1..characters.len()).find(|&candidate| {
            closings.contains(&characters[candidate].1)
                && !(is_single && is_word_char(candidate + 1))
        });
        let Some(closing_position) = closing_position else {
            exhausted_openings.push(opening);
            position += 1;
            continue;
        };
        let inner_start = open_offset + opening.len_utf8();
        let inner_end = characters[closing_position].0;
        push_trimmed(
            question,
            inner_start,
            inner_end,
            EntityKind::Quoted,
            candidates,
        );
        position = closing_position + 1;
    }
}

fn push_trimmed(
    question: &str,
    start: usize,
    end: usize,
    kind: EntityKind,
    candidates: &mut Vec<Candidate>,
) {
    let Some(inner) = question.get(start..end) else {
        return;
    };
    let leading = inner.len() - inner.trim_start().len();
    let trimmed = inner.trim();
    if trimmed.is_empty() {
        return;
    }
    let trimmed_start = start + leading;
    candidates.push(Candidate {
        start: trimmed_start,
        end: trimmed_start + trimmed.len(),
        kind,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(question: &str) -> Vec<(String, EntityKind)> {
        extract(question)
            .into_iter()
            .map(|entity| (entity.text, entity.kind))
            .collect()
    }

    fn has(question: &str, text: &str, kind: EntityKind) -> bool {
        pairs(question).contains(&(text.to_string(), kind))
    }

    #[test]
    fn mixed_question_entities() {
        let question = "Compare \"zero trust\" with VPNs at NASA since 2019";
        assert!(has(question, "zero trust", EntityKind::Quoted));
        assert!(has(question, "VPNs", EntityKind::Acronym));
        assert!(has(question, "NASA", EntityKind::Acronym));
        assert!(has(question, "2019", EntityKind::Date));
        assert!(!pairs(question).iter().any(|(text, _)| text == "Compare"));
    }

    #[test]
    fn proper_spans_and_sentence_starters() {
        let question = "How big is the New York Stock Exchange compared to the Bank of America?";
        assert!(has(question, "New York Stock Exchange", EntityKind::Proper));
        assert!(has(question, "Bank of America", EntityKind::Proper));
        assert!(has("Paris is lovely", "Paris", EntityKind::Proper));
        assert!(pairs("What is it").is_empty());
        assert!(has(
            "why did Kodak's film fail",
            "Kodak",
            EntityKind::Proper
        ));
        assert!(pairs("I'm here").is_empty());
    }

    #[test]
    fn acronyms_with_symbols() {
        assert!(has("is HTTP/2 faster", "HTTP/2", EntityKind::Acronym));
        assert!(has("who owns AT&T", "AT&T", EntityKind::Acronym));
    }

    #[test]
    fn numbers_and_dates() {
        let question =
            "Sales rose 12.5% to 1,000 units on March 3, 2021 and 2021-03-04 and 3/4/2021";
        assert!(has(question, "12.5%", EntityKind::Number));
        assert!(has(question, "1,000", EntityKind::Number));
        assert!(has(question, "March 3, 2021", EntityKind::Date));
        assert!(has(question, "2021-03-04", EntityKind::Date));
        assert!(has(question, "3/4/2021", EntityKind::Date));
        assert!(has("born in 1879", "1879", EntityKind::Date));
        assert!(has("the 1980s", "1980s", EntityKind::Date));
        assert!(has("an RTX 3080", "3080", EntityKind::Number));
        assert!(!has("may i go", "may", EntityKind::Date));
    }

    #[test]
    fn quotes_and_apostrophes() {
        assert!(has(
            "what does 'habeas corpus' mean",
            "habeas corpus",
            EntityKind::Quoted
        ));
        assert!(has(
            "the “Big Apple” nickname",
            "Big Apple",
            EntityKind::Quoted
        ));
        assert!(!pairs("don't stop, it's Warriors' time")
            .iter()
            .any(|(_, kind)| *kind == EntityKind::Quoted));
    }

    #[test]
    fn entities_do_not_overlap_and_slice_correctly() {
        let question =
            "Who painted \"The Garden of Earthly Delights\" in 1500 for Henry III of Nassau?";
        let found = extract(question);
        for pair in found.windows(2) {
            assert!(pair[0].end <= pair[1].start);
        }
        for entity in &found {
            assert_eq!(&question[entity.start..entity.end], entity.text);
        }
        assert!(has(
            question,
            "The Garden of Earthly Delights",
            EntityKind::Quoted
        ));
    }

    #[test]
    fn weird_input_never_panics() {
        let long_input = "Ünïcödé 'x 12,3 🙂 ".repeat(2_000);
        for text in [
            "",
            "   ",
            "\"unterminated",
            "'",
            "日本語のテキスト",
            "🙂🙂 WHAT",
            "9,99",
            "1.",
            "March",
            long_input.as_str(),
        ] {
            for entity in extract(text) {
                assert_eq!(
                    text.get(entity.start..entity.end),
                    Some(entity.text.as_str())
                );
            }
        }
    }
}
