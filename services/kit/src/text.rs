//! Shared text utilities: sentence splitting, content-term extraction with light stemming,
//! and term-overlap measures used to compare questions, answers and passages.

use std::collections::HashSet;

/// The fixed reply given when the indexed documents hold nothing that answers the question.
/// Shared so that the generator writes it and the evaluator recognises it.
pub const NO_ANSWER: &str = "The indexed documents do not contain an answer to this question.";

/// Compact English stop list, sorted so that it can be binary-searched.
/// Apostrophes are removed before lookup, so contractions appear without them ("dont").
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "arent",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "cannot",
    "cant",
    "could",
    "couldnt",
    "describe",
    "did",
    "didnt",
    "do",
    "does",
    "doesnt",
    "doing",
    "done",
    "dont",
    "down",
    "during",
    "each",
    "either",
    "else",
    "etc",
    "ever",
    "every",
    "explain",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "hasnt",
    "have",
    "havent",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "however",
    "i",
    "if",
    "im",
    "in",
    "into",
    "is",
    "isnt",
    "it",
    "its",
    "itself",
    "ive",
    "just",
    "may",
    "me",
    "might",
    "more",
    "most",
    "much",
    "must",
    "my",
    "myself",
    "neither",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "others",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "please",
    "same",
    "shall",
    "she",
    "should",
    "shouldnt",
    "so",
    "some",
    "such",
    "tell",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "theyre",
    "this",
    "those",
    "though",
    "through",
    "thus",
    "to",
    "too",
    "under",
    "until",
    "up",
    "upon",
    "us",
    "very",
    "was",
    "wasnt",
    "we",
    "were",
    "werent",
    "what",
    "whatever",
    "when",
    "where",
    "whether",
    "which",
    "while",
    "who",
    "whom",
    "whose",
    "why",
    "will",
    "with",
    "within",
    "without",
    "wont",
    "would",
    "wouldnt",
    "yet",
    "you",
    "your",
    "youre",
    "yours",
    "yourself",
    "yourselves",
];

/// Lowercased words that end with a period without ending the sentence.
const ABBREVIATIONS: &[&str] = &[
    "al", "approx", "cf", "dept", "dr", "eq", "fig", "figs", "jr", "mr", "mrs", "ms", "mt", "pp",
    "prof", "sr", "st", "vol", "vs",
];

/// Minimum length, in characters, of what remains after a suffix is stripped.
const MIN_STEM_CHARS: usize = 3;

/// Splits text into sentences (on . ! ? followed by whitespace + uppercase/digit/quote, or
/// newlines; don't split "e.g.", "i.e.", "et al.", "Dr.", "vs.", decimals like 3.5, or
/// single-letter initials). Returns trimmed non-empty slices of the input.
///
/// Full-width CJK terminators (。！？) always end a sentence, and letters from scripts without
/// case count as a sentence start.
pub fn split_sentences(text: &str) -> Vec<&str> {
    let characters: Vec<(usize, char)> = text.char_indices().collect();
    let mut sentences = Vec::new();
    let mut sentence_start = 0usize;
    let mut index = 0usize;
    while index < characters.len() {
        let (offset, character) = characters[index];
        if character == '\n' || character == '\r' || is_unconditional_terminator(character) {
            let sentence_end = if is_unconditional_terminator(character) {
                offset + character.len_utf8()
            } else {
                offset
            };
            push_trimmed(&mut sentences, text, sentence_start, sentence_end);
            sentence_start = offset + character.len_utf8();
            index += 1;
            continue;
        }
        if !is_sentence_terminator(character) {
            index += 1;
            continue;
        }
        let after_terminator = skip_terminator_run(&characters, index + 1);
        if !sentence_break_follows(&characters, after_terminator) {
            index = after_terminator.max(index + 1);
            continue;
        }
        if character == '.' && abbreviation_precedes(&text[sentence_start..offset]) {
            index = after_terminator;
            continue;
        }
        let sentence_end = characters[after_terminator].0;
        push_trimmed(&mut sentences, text, sentence_start, sentence_end);
        sentence_start = sentence_end;
        index = after_terminator;
    }
    push_trimmed(&mut sentences, text, sentence_start, text.len());
    sentences
}

/// Lowercased alphanumeric terms (unicode-aware: split on non-alphanumeric), stop words
/// removed, light suffix stemming (plural "s"/"es"/"ies"->"y", "ing", "ed" — conservative,
/// min stem length 3). Used to compare questions, answers and passages.
///
/// Apostrophes inside words are dropped ("don't" -> "dont", a trailing "'s" is removed),
/// single letters are dropped, terms containing digits are kept verbatim, and a final "e" is
/// removed from terms of four or more characters so that "glucose", "increased" and
/// "increasing" meet on the same stem. Duplicates are kept, in text order.
pub fn content_terms(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    for raw_word in
        text.split(|character: char| !character.is_alphanumeric() && !is_apostrophe(character))
    {
        let word = raw_word.trim_matches(is_apostrophe);
        if word.is_empty() {
            continue;
        }
        let lowered = word.to_lowercase();
        let without_possessive = strip_possessive(&lowered);
        let joined: String = without_possessive
            .chars()
            .filter(|character| !is_apostrophe(*character))
            .collect();
        if is_single_letter(&joined) || is_stop_word(&joined) {
            continue;
        }
        let stemmed = stem_term(&joined);
        if stemmed.is_empty() || is_stop_word(&stemmed) {
            continue;
        }
        terms.push(stemmed);
    }
    terms
}

/// Whether `term` is on the compact English stop list (articles, pronouns, auxiliaries,
/// prepositions, question words and a few question verbs such as "explain").
/// Matching ignores case and apostrophes.
pub fn is_stop_word(term: &str) -> bool {
    if STOP_WORDS.binary_search(&term).is_ok() {
        return true;
    }
    let needs_normalising = term
        .chars()
        .any(|character| character.is_uppercase() || is_apostrophe(character));
    if !needs_normalising {
        return false;
    }
    let normalised: String = term
        .to_lowercase()
        .chars()
        .filter(|character| !is_apostrophe(*character))
        .collect();
    STOP_WORDS.binary_search(&normalised.as_str()).is_ok()
}

/// Overlap of two term bags: |A ∩ B| / |A| as a set measure (0 when A empty).
/// `terms` is A, `of` is B.
pub fn term_coverage(terms: &[String], of: &[String]) -> f32 {
    let distinct_terms: HashSet<&str> = terms.iter().map(String::as_str).collect();
    if distinct_terms.is_empty() {
        return 0.0;
    }
    let other_terms: HashSet<&str> = of.iter().map(String::as_str).collect();
    let shared_count = distinct_terms
        .iter()
        .filter(|term| other_terms.contains(*term))
        .count();
    shared_count as f32 / distinct_terms.len() as f32
}

fn push_trimmed<'text>(
    sentences: &mut Vec<&'text str>,
    text: &'text str,
    start: usize,
    end: usize,
) {
    let Some(candidate) = text.get(start..end) else {
        return;
    };
    let trimmed = candidate.trim();
    if trimmed.is_empty() {
        return;
    }
    sentences.push(trimmed);
}

fn is_sentence_terminator(character: char) -> bool {
    matches!(character, '.' | '!' | '?' | '…')
}

fn is_unconditional_terminator(character: char) -> bool {
    matches!(character, '。' | '！' | '？')
}

fn is_closing_punctuation(character: char) -> bool {
    matches!(character, '"' | '\'' | ')' | ']' | '”' | '’' | '»')
}

fn is_apostrophe(character: char) -> bool {
    character == '\'' || character == '’'
}

/// Returns the index just past any further terminators and closing quotes/brackets.
fn skip_terminator_run(characters: &[(usize, char)], mut index: usize) -> usize {
    while let Some((_, character)) = characters.get(index) {
        if !is_sentence_terminator(*character) && !is_closing_punctuation(*character) {
            break;
        }
        index += 1;
    }
    index
}

/// True when the character at `index` is horizontal whitespace and the first non-space
/// character after it could start a sentence. End of text and newlines return false: the
/// newline rule and the final push end those sentences anyway.
fn sentence_break_follows(characters: &[(usize, char)], index: usize) -> bool {
    let Some((_, first_after)) = characters.get(index) else {
        return false;
    };
    if !first_after.is_whitespace() {
        return false;
    }
    let next_visible = characters[index..]
        .iter()
        .map(|(_, character)| *character)
        .find(|character| !character.is_whitespace() || *character == '\n' || *character == '\r');
    match next_visible {
        Some(character) => could_start_sentence(character),
        None => false,
    }
}

fn could_start_sentence(character: char) -> bool {
    if character.is_uppercase() || character.is_numeric() {
        return true;
    }
    if matches!(character, '"' | '\'' | '“' | '‘' | '«' | '(' | '[') {
        return true;
    }
    // Scripts without case (CJK, Arabic, Hebrew, ...) cannot signal a start with a capital.
    character.is_alphabetic() && !character.is_lowercase()
}

/// Whether the word ending right before a period is an abbreviation or an initial.
fn abbreviation_precedes(text_before_period: &str) -> bool {
    let last_token = text_before_period
        .rsplit(char::is_whitespace)
        .next()
        .unwrap_or_default();
    let token = last_token.trim_start_matches(|character: char| !character.is_alphanumeric());
    if token.is_empty() {
        return false;
    }
    let mut token_characters = token.chars();
    if let (Some(only), None) = (token_characters.next(), token_characters.next()) {
        return only.is_alphabetic() && only.is_uppercase();
    }
    let lowered = token.to_lowercase();
    if ABBREVIATIONS.contains(&lowered.as_str()) {
        return true;
    }
    // Dotted letter sequences: "e.g", "i.e", "U.S".
    lowered.contains('.')
        && lowered.split('.').all(|segment| {
            let mut segment_characters = segment.chars();
            matches!(
                (segment_characters.next(), segment_characters.next()),
                (Some(letter), None) if letter.is_alphabetic()
            )
        })
}

fn is_single_letter(term: &str) -> bool {
    let mut characters = term.chars();
    matches!(
        (characters.next(), characters.next()),
        (Some(only), None) if !only.is_numeric()
    )
}

fn strip_possessive(word: &str) -> &str {
    word.strip_suffix("'s")
        .or_else(|| word.strip_suffix("’s"))
        .unwrap_or(word)
}

fn character_count(text: &str) -> usize {
    text.chars().count()
}

fn stem_term(term: &str) -> String {
    if term.chars().any(char::is_numeric) {
        return term.to_string();
    }
    let without_suffix = strip_inflection(term);
    drop_final_e(without_suffix)
}

fn strip_inflection(term: &str) -> String {
    if let Some(stem) = term
        .strip_suffix("ies")
        .or_else(|| term.strip_suffix("ied"))
    {
        if character_count(stem) >= MIN_STEM_CHARS {
            return format!("{stem}y");
        }
        return term.to_string();
    }
    if let Some(stem) = term.strip_suffix("sses") {
        return format!("{stem}ss");
    }
    if let Some(stem) = term.strip_suffix("es") {
        let sibilant = ["x", "z", "ch", "sh"]
            .iter()
            .any(|ending| stem.ends_with(ending));
        if sibilant && character_count(stem) >= MIN_STEM_CHARS {
            return stem.to_string();
        }
    }
    if let Some(stem) = term.strip_suffix('s') {
        let keeps_final_s = stem.ends_with('s') || stem.ends_with('u') || stem.ends_with('i');
        if !keeps_final_s && character_count(stem) >= MIN_STEM_CHARS {
            return stem.to_string();
        }
        return term.to_string();
    }
    if let Some(stem) = term.strip_suffix("ing") {
        if character_count(stem) >= MIN_STEM_CHARS {
            return undouble_final_consonant(stem);
        }
        return term.to_string();
    }
    if let Some(stem) = term.strip_suffix("ed") {
        if character_count(stem) >= MIN_STEM_CHARS && !stem.ends_with('e') {
            return undouble_final_consonant(stem);
        }
    }
    term.to_string()
}

/// "runn" -> "run", "stopp" -> "stop"; leaves "fall", "pass", "buzz" alone.
fn undouble_final_consonant(stem: &str) -> String {
    let mut reversed = stem.chars().rev();
    let (Some(last), Some(before_last)) = (reversed.next(), reversed.next()) else {
        return stem.to_string();
    };
    let doubled_consonant = last == before_last
        && last.is_ascii_alphabetic()
        && !matches!(last, 'a' | 'e' | 'i' | 'o' | 'u' | 'l' | 's' | 'z');
    if !doubled_consonant || character_count(stem) <= MIN_STEM_CHARS {
        return stem.to_string();
    }
    let mut shortened = stem.to_string();
    shortened.pop();
    shortened
}

fn drop_final_e(term: String) -> String {
    if character_count(&term) < 4 || !term.ends_with('e') {
        return term;
    }
    let mut shortened = term;
    shortened.pop();
    shortened
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(text: &str) -> Vec<String> {
        content_terms(text)
    }

    #[test]
    fn stop_list_is_sorted_and_unique() {
        let mut sorted = STOP_WORDS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, STOP_WORDS.to_vec());
        assert!(STOP_WORDS.len() >= 140);
    }

    #[test]
    fn splits_on_terminators_followed_by_capital() {
        let sentences =
            split_sentences("Insulin lowers glucose. It is made in the pancreas! Why? Because.");
        assert_eq!(
            sentences,
            vec![
                "Insulin lowers glucose.",
                "It is made in the pancreas!",
                "Why?",
                "Because."
            ]
        );
    }

    #[test]
    fn does_not_split_before_lowercase_or_inside_decimals() {
        let sentences = split_sentences("The dose was 3.5 mg. next came more. The end");
        assert_eq!(
            sentences,
            vec!["The dose was 3.5 mg. next came more.", "The end"]
        );
    }

    #[test]
    fn keeps_abbreviations_and_initials_together() {
        let text = "Some hormones, e.g. Insulin, act fast. Smith et al. Found this. Dr. Jones vs. Dr. Who met J. R. Tolkien. Then i.e. Nothing.";
        let sentences = split_sentences(text);
        assert_eq!(
            sentences,
            vec![
                "Some hormones, e.g. Insulin, act fast.",
                "Smith et al. Found this.",
                "Dr. Jones vs. Dr. Who met J. R. Tolkien.",
                "Then i.e. Nothing."
            ]
        );
    }

    #[test]
    fn splits_on_newlines_and_quotes_and_digits() {
        let sentences =
            split_sentences("Title line\nFirst one. \"Quoted start.\" 42 is a number.\r\n\n  ");
        assert_eq!(
            sentences,
            vec![
                "Title line",
                "First one.",
                "\"Quoted start.\"",
                "42 is a number."
            ]
        );
    }

    #[test]
    fn splitting_handles_unicode_and_degenerate_input() {
        assert!(split_sentences("").is_empty());
        assert!(split_sentences("   \n\t \r\n").is_empty());
        assert_eq!(split_sentences("..."), vec!["..."]);
        assert_eq!(
            split_sentences("Ünïcödé. Émoji 🎉! 😀 ok"),
            vec!["Ünïcödé.", "Émoji 🎉! 😀 ok"]
        );
        assert_eq!(
            split_sentences("東京は大きい。大阪も大きい。"),
            vec!["東京は大きい。", "大阪も大きい。"]
        );
        assert_eq!(
            split_sentences("Wait... What?! Yes."),
            vec!["Wait...", "What?!", "Yes."]
        );
        for sentence in split_sentences("a. B. c! D? . . ! ?") {
            assert!(!sentence.is_empty());
        }
    }

    #[test]
    fn split_sentences_returns_slices_of_input() {
        let text = "One thing. Two things.";
        for sentence in split_sentences(text) {
            let start = sentence.as_ptr() as usize - text.as_ptr() as usize;
            assert_eq!(&text[start..start + sentence.len()], sentence);
        }
    }

    #[test]
    fn content_terms_remove_stop_words_and_lowercase() {
        assert_eq!(
            terms("What is the role of Insulin?"),
            vec!["rol", "insulin"]
        );
        assert!(terms("How and why is it what it is?").is_empty());
        assert!(terms("").is_empty());
        assert!(terms("  \n ").is_empty());
    }

    #[test]
    fn content_terms_stem_conservatively() {
        assert_eq!(terms("studies studied"), vec!["study", "study"]);
        assert_eq!(terms("boxes box"), vec!["box", "box"]);
        assert_eq!(terms("classes class"), vec!["class", "class"]);
        assert_eq!(terms("running runs"), vec!["run", "run"]);
        assert_eq!(terms("stopped stops"), vec!["stop", "stop"]);
        assert_eq!(
            terms("increased increasing increases increase"),
            vec!["increas"; 4]
        );
        assert_eq!(terms("glucose"), vec!["glucos"]);
        // Short stems stay whole; "-ss", "-us", "-is" words keep their s.
        assert_eq!(terms("gas thing used"), vec!["gas", "thing", "used"]);
        assert_eq!(
            terms("glass status analysis"),
            vec!["glass", "status", "analysis"]
        );
        // Numbers are kept verbatim.
        assert_eq!(
            terms("covid19 3.5 2024s"),
            vec!["covid19", "3", "5", "2024s"]
        );
    }

    #[test]
    fn content_terms_handle_apostrophes_and_unicode() {
        assert_eq!(
            terms("Don't use the pancreas's cells"),
            vec!["use", "pancrea", "cell"]
        );
        assert_eq!(terms("It’s Ångström’s café"), vec!["ångström", "café"]);
        assert_eq!(
            terms("naïve Straße 東京 🎉 '' ’"),
            vec!["naïv", "straß", "東京"]
        );
        assert_eq!(terms("e.g. J. Smith"), vec!["smith"]);
    }

    #[test]
    fn stop_words_ignore_case_and_apostrophes() {
        assert!(is_stop_word("the"));
        assert!(is_stop_word("What"));
        assert!(is_stop_word("don't"));
        assert!(is_stop_word("which"));
        assert!(!is_stop_word("insulin"));
        assert!(!is_stop_word(""));
    }

    #[test]
    fn coverage_is_a_set_measure() {
        let question = terms("insulin glucose liver");
        let passage = terms("Insulin lowers glucose glucose glucose");
        let coverage = term_coverage(&question, &passage);
        assert!((coverage - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(term_coverage(&[], &passage), 0.0);
        assert_eq!(term_coverage(&question, &[]), 0.0);
        let repeated = vec!["a".to_string(), "a".to_string(), "b".to_string()];
        let only_a = vec!["a".to_string()];
        assert!((term_coverage(&repeated, &only_a) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn huge_input_does_not_panic() {
        let text = "Émoji 🎉 sentence number one. ".repeat(20_000);
        assert_eq!(split_sentences(&text).len(), 20_000);
        assert_eq!(content_terms(&text).len(), 80_000);
    }
}
