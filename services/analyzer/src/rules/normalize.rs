//! Text normalisation for the classifier: splits a question into clauses and
//! turns each clause into lowercase word tokens with contractions expanded,
//! punctuation removed, common typos fixed and leading filler words dropped.
//!
//! Example: `"Hey, what's the diffrence between X and Y?"` becomes the clauses
//! `["hey"]` → `[]` (filler only) and `["what", "is", "the", "difference", ...]`.

/// Words that are written without an apostrophe or misspelt often enough that
/// search-box questions contain them; mapped to their standard form(s).
const TOKEN_REWRITES: &[(&str, &str)] = &[
    ("whats", "what is"),
    ("hows", "how is"),
    ("whos", "who is"),
    ("wheres", "where is"),
    ("whens", "when is"),
    ("whys", "why is"),
    ("dont", "do not"),
    ("doesnt", "does not"),
    ("didnt", "did not"),
    ("isnt", "is not"),
    ("arent", "are not"),
    ("cant", "can not"),
    ("cannot", "can not"),
    ("wont", "will not"),
    ("shouldnt", "should not"),
    ("im", "i am"),
    ("ive", "i have"),
    ("wich", "which"),
    ("whitch", "which"),
    ("waht", "what"),
    ("wat", "what"),
    ("hwo", "how"),
    ("shoud", "should"),
    ("diffrence", "difference"),
    ("differnce", "difference"),
    ("thru", "through"),
    ("u", "you"),
    ("pls", "please"),
    ("plz", "please"),
    ("vs", "versus"),
    ("tradeoffs", "trade offs"),
    ("tradeoff", "trade off"),
];

/// Subject words after which `'s` means "is" rather than a possessive.
const IS_CONTRACTION_STEMS: &[&str] = &[
    "what", "how", "who", "where", "when", "why", "which", "it", "that", "there", "here", "he",
    "she",
];

/// Leading words or phrases that carry no information about the answer type.
const LEADING_FILLERS: &[&str] = &[
    "please",
    "and",
    "but",
    "so",
    "or",
    "then",
    "also",
    "ok",
    "okay",
    "hey",
    "hi",
    "hello",
    "well",
    "um",
    "just",
    "kindly",
    "roughly",
    "approximately",
    "quick question",
    "can you",
    "could you",
    "would you",
    "i am trying to remember",
    "i am curious",
    "i was wondering",
    "i wonder",
    "do you know",
];

/// Splits raw text into clauses at `, ; : ? ! newline` and at a full stop that
/// is followed by whitespace or the end of the text (so "6.8" stays intact).
pub fn split_clauses(text: &str) -> Vec<&str> {
    let mut clauses = Vec::new();
    let mut clause_start = 0;
    let mut characters = text.char_indices().peekable();
    while let Some((index, character)) = characters.next() {
        let next_is_space_or_end = characters
            .peek()
            .is_none_or(|&(_, next)| next.is_whitespace());
        let is_break = matches!(character, ',' | ';' | ':' | '?' | '!' | '\n')
            || (character == '.' && next_is_space_or_end);
        if !is_break {
            continue;
        }
        clauses.push(&text[clause_start..index]);
        clause_start = index + character.len_utf8();
    }
    clauses.push(&text[clause_start..]);
    clauses.retain(|clause| !clause.trim().is_empty());
    clauses
}

/// Expands one whitespace-separated word (already lowercase) into tokens.
fn expand_word(word: &str, tokens: &mut Vec<String>) {
    let word = word.replace('’', "'");
    let word = word.trim_matches(|character: char| !character.is_alphanumeric());
    if word.is_empty() {
        return;
    }
    let expanded = expand_contraction(word);
    for piece in expanded.split(|character: char| !character.is_alphanumeric()) {
        if piece.is_empty() {
            continue;
        }
        let rewritten = TOKEN_REWRITES
            .iter()
            .find(|(from, _)| *from == piece)
            .map_or(piece, |(_, to)| to);
        tokens.extend(rewritten.split(' ').map(str::to_string));
    }
}

/// Rewrites an apostrophe contraction ("what's", "don't", "we're") into full words.
fn expand_contraction(word: &str) -> String {
    match word {
        "can't" => return "can not".to_string(),
        "won't" => return "will not".to_string(),
        "shan't" => return "shall not".to_string(),
        _ => {}
    }
    if let Some(stem) = word.strip_suffix("n't") {
        return format!("{stem} not");
    }
    if let Some(stem) = word.strip_suffix("'s") {
        if IS_CONTRACTION_STEMS.contains(&stem) {
            return format!("{stem} is");
        }
        return stem.to_string();
    }
    let suffixes = [
        ("'re", "are"),
        ("'m", "am"),
        ("'ve", "have"),
        ("'ll", "will"),
        ("'d", "would"),
    ];
    for (suffix, full) in suffixes {
        if let Some(stem) = word.strip_suffix(suffix) {
            return format!("{stem} {full}");
        }
    }
    word.to_string()
}

/// Lowercases a piece of text and turns it into normalised word tokens.
pub fn tokenize(text: &str) -> Vec<String> {
    let lowered = text.to_lowercase();
    let mut tokens = Vec::new();
    for word in lowered.split_whitespace() {
        expand_word(word, &mut tokens);
    }
    tokens
}

/// Removes leading filler words/phrases ("please", "can you", "and") repeatedly.
pub fn strip_leading_fillers(tokens: &[String]) -> &[String] {
    let mut remaining = tokens;
    loop {
        let filler_length = LEADING_FILLERS.iter().find_map(|filler| {
            let filler_words: Vec<&str> = filler.split(' ').collect();
            let matches = remaining.len() > filler_words.len()
                && filler_words
                    .iter()
                    .zip(remaining)
                    .all(|(filler_word, token)| filler_word == token);
            matches.then_some(filler_words.len())
        });
        match filler_length {
            Some(length) => remaining = &remaining[length..],
            None => return remaining,
        }
    }
}

/// A question prepared for cue matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedQuestion {
    /// Tokens of each clause with leading fillers removed; empty clauses dropped.
    pub clauses: Vec<Vec<String>>,
    /// All tokens of the question in order (fillers included).
    pub all_tokens: Vec<String>,
}

/// Normalises a raw question into clause tokens and the full token list.
pub fn normalize_question(question: &str) -> NormalizedQuestion {
    let mut clauses = Vec::new();
    let mut all_tokens = Vec::new();
    for raw_clause in split_clauses(question) {
        let tokens = tokenize(raw_clause);
        let core = strip_leading_fillers(&tokens).to_vec();
        if !core.is_empty() {
            clauses.push(core);
        }
        all_tokens.extend(tokens);
    }
    NormalizedQuestion {
        clauses,
        all_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contractions_and_typos_are_expanded() {
        assert_eq!(
            tokenize("What's the diffrence"),
            ["what", "is", "the", "difference"]
        );
        assert_eq!(tokenize("Why don’t we"), ["why", "do", "not", "we"]);
        assert_eq!(tokenize("wich one"), ["which", "one"]);
        assert_eq!(
            tokenize("my grandmother's cake"),
            ["my", "grandmother", "cake"]
        );
    }

    #[test]
    fn clauses_split_on_punctuation_but_not_decimals() {
        let clauses = split_clauses("at 6.8%, is it smarter? yes. ok");
        assert_eq!(clauses, ["at 6.8%", " is it smarter", " yes", " ok"]);
    }

    #[test]
    fn fillers_are_stripped_from_clause_starts() {
        let normalized = normalize_question("Can you please walk me through it");
        assert_eq!(normalized.clauses[0][0], "walk");
        assert_eq!(normalized.all_tokens[0], "can");
    }

    #[test]
    fn weird_input_does_not_panic() {
        for text in [
            "",
            "   ",
            "'",
            "...",
            "日本語のテキスト",
            "🙂🙂 WHAT",
            "n't 's",
        ] {
            let normalized = normalize_question(text);
            assert!(normalized.clauses.iter().all(|clause| !clause.is_empty()));
        }
    }
}
