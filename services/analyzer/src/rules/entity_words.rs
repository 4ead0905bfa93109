//! Word-level entity detection: splits the question into words and finds
//! acronyms ("NASA", "HTTP/2", "AT&T", "VPNs") and capitalised proper-noun
//! spans ("New York Stock Exchange", "Bank of America"), skipping a capitalised
//! sentence-initial common word such as "What", "How" or "Compare".

use super::entities::Candidate;
use super::EntityKind;

/// Capitalised words that only start a sentence and are not names by themselves.
#[rustfmt::skip]
const COMMON_SENTENCE_STARTERS: &[&str] = &[
    "a", "about", "all", "also", "an", "analyse", "analyze", "and", "any", "are", "assess", "at",
    "best", "between", "brainstorm", "but", "can", "come", "compare", "compose", "convert",
    "could", "create", "define", "describe", "did", "do", "does", "draft", "evaluate", "explain",
    "find", "for", "from", "generate", "give", "has", "have", "hello", "help", "hey", "hi", "how",
    "if", "imagine", "in", "invent", "is", "it", "it's", "its", "list", "make", "my", "name",
    "need", "on", "or", "our", "please", "pretend", "roughly", "should", "show", "so", "some",
    "steps", "suggest", "tell", "that", "the", "these", "this", "those", "tips", "to", "was",
    "we", "we're", "were", "what", "what's", "whats", "when", "where", "which", "who", "whose",
    "why", "will", "with", "would", "write", "you", "your",
];

/// First-person forms that are capitalised everywhere but are never names.
#[rustfmt::skip]
const PRONOUNS: &[&str] = &[
    "i", "i'm", "i’m", "i've", "i’ve", "i'd", "i’d", "i'll", "i’ll",
];

/// Lowercase words allowed inside a proper-noun span ("Bank of America").
#[rustfmt::skip]
const NAME_CONNECTORS: &[&str] = &[
    "of", "the", "de", "da", "del", "du", "la", "van", "von", "der",
];

#[derive(Debug, Clone)]
pub(super) struct Word<'a> {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) text: &'a str,
    pub(super) sentence_initial: bool,
    /// A trailing `'s` or `'` was removed; a name span must end here.
    pub(super) possessive: bool,
}

fn is_word_char(character: char) -> bool {
    character.is_alphanumeric() || matches!(character, '-' | '\'' | '’' | '&' | '/')
}

fn is_sentence_start(question: &str, offset: usize) -> bool {
    let before = question.get(..offset).unwrap_or("");
    let last = before.trim_end_matches(|c: char| {
        c.is_whitespace() || matches!(c, '"' | '“' | '\'' | '‘' | '(' | '[')
    });
    last.is_empty() || last.ends_with(['.', '?', '!', ':', '\n'])
}

/// Splits into words: runs of alphanumerics plus inner `- ' & /`, trimmed of
/// trailing punctuation and a possessive `'s`.
pub(super) fn split_words(question: &str) -> Vec<Word<'_>> {
    let mut words = Vec::new();
    let mut characters = question.char_indices().peekable();
    while let Some((start, character)) = characters.next() {
        if !character.is_alphanumeric() {
            continue;
        }
        let mut end = start + character.len_utf8();
        while let Some(&(offset, next)) = characters.peek() {
            if !is_word_char(next) {
                break;
            }
            end = offset + next.len_utf8();
            characters.next();
        }
        let raw = &question[start..end];
        let without_punctuation = raw.trim_end_matches(|c: char| !c.is_alphanumeric());
        let without_possessive = without_punctuation
            .strip_suffix("'s")
            .or_else(|| without_punctuation.strip_suffix("’s"))
            .unwrap_or(without_punctuation);
        let possessive = without_possessive.len() < raw.len()
            && raw[without_possessive.len()..].starts_with(['\'', '’']);
        words.push(Word {
            start,
            end: start + without_possessive.len(),
            text: without_possessive,
            sentence_initial: is_sentence_start(question, start),
            possessive,
        });
    }
    words
}

fn is_acronym(text: &str) -> bool {
    let body = text.strip_suffix('s').unwrap_or(text);
    let uppercase = body.chars().filter(char::is_ascii_uppercase).count();
    let starts_upper = body.starts_with(|c: char| c.is_ascii_uppercase());
    let allowed = body
        .chars()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || matches!(c, '&' | '/' | '-'));
    starts_upper
        && uppercase >= 2
        && allowed
        && !COMMON_SENTENCE_STARTERS.contains(&text.to_lowercase().as_str())
}

fn is_name_word(word: &Word) -> bool {
    let starts_upper = word.text.starts_with(char::is_uppercase);
    let has_lowercase = word.text.chars().any(char::is_lowercase);
    let lower = word.text.to_lowercase();
    if !starts_upper || !has_lowercase || PRONOUNS.contains(&lower.as_str()) {
        return false;
    }
    !(word.sentence_initial && COMMON_SENTENCE_STARTERS.contains(&lower.as_str()))
}

fn only_spaces_between(question: &str, left_end: usize, right_start: usize) -> bool {
    question
        .get(left_end..right_start)
        .is_some_and(|gap| !gap.is_empty() && gap.chars().all(|c| c == ' '))
}

/// Acronyms and maximal capitalised spans, allowing connectors ("Bank of America").
pub(super) fn find_acronyms_and_proper_spans(
    question: &str,
    words: &[Word],
    candidates: &mut Vec<Candidate>,
) {
    let mut index = 0;
    while index < words.len() {
        let word = &words[index];
        if is_acronym(word.text) {
            candidates.push(Candidate {
                start: word.start,
                end: word.end,
                kind: EntityKind::Acronym,
            });
            index += 1;
            continue;
        }
        if !is_name_word(word) {
            index += 1;
            continue;
        }
        let mut last = index;
        while !words[last].possessive {
            let next = last + 1;
            let Some(next_word) = words.get(next) else {
                break;
            };
            if !only_spaces_between(question, words[last].end, next_word.start) {
                break;
            }
            if is_name_word(next_word) {
                last = next;
                continue;
            }
            let connector = NAME_CONNECTORS.contains(&next_word.text);
            let Some(after) = words.get(next + 1) else {
                break;
            };
            if connector
                && only_spaces_between(question, next_word.end, after.start)
                && is_name_word(after)
            {
                last = next + 1;
                continue;
            }
            break;
        }
        candidates.push(Candidate {
            start: word.start,
            end: words[last].end,
            kind: EntityKind::Proper,
        });
        index = last + 1;
    }
}
