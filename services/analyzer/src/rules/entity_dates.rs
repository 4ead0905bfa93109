//! Number and date detection for entity extraction: plain numbers ("1,000",
//! "12.5%", "50k", "16th"), bare years (1000-2099, "1980s"), ISO and slash
//! dates ("2021-03-04", "3/4/2021") and month-name dates ("March 3, 2021",
//! "3rd March 2021", "March 2023"). Scanning works on ASCII bytes only, so
//! every offset produced is a `char` boundary.

use super::entities::Candidate;
use super::entity_words::Word;
use super::EntityKind;

#[rustfmt::skip]
const MONTHS: &[&str] = &[
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec",
];

/// Month names that are also ordinary lowercase words.
#[rustfmt::skip]
const AMBIGUOUS_LOWERCASE_MONTHS: &[&str] = &["may", "march", "august", "mar", "jan", "dec"];

fn previous_char(question: &str, offset: usize) -> Option<char> {
    question
        .get(..offset)
        .and_then(|before| before.chars().next_back())
}

fn count_digits(bytes: &[u8], start: usize) -> usize {
    bytes.get(start..).map_or(0, |rest| {
        rest.iter().take_while(|byte| byte.is_ascii_digit()).count()
    })
}

fn is_year(text: &str) -> bool {
    text.len() == 4
        && text
            .parse::<u32>()
            .is_ok_and(|value| (1000..=2099).contains(&value))
}

/// Length of a number starting at `start`: digits, `,ddd` groups, one decimal part.
fn numeric_length(bytes: &[u8], start: usize) -> usize {
    let mut end = start + count_digits(bytes, start);
    while bytes.get(end) == Some(&b',') && count_digits(bytes, end + 1) == 3 {
        end += 4;
    }
    if bytes.get(end) == Some(&b'.') && count_digits(bytes, end + 1) > 0 {
        end += 1 + count_digits(bytes, end + 1);
    }
    end - start
}

/// Numbers ("1,000", "3.5", "20%", "50k", "16th") and bare years (1000-2099, "1980s").
pub(super) fn find_numbers_and_years(question: &str, candidates: &mut Vec<Candidate>) {
    let bytes = question.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let starts_number = bytes[index].is_ascii_digit()
            && !previous_char(question, index).is_some_and(char::is_alphanumeric);
        if !starts_number {
            index += 1;
            continue;
        }
        let numeric_end = index + numeric_length(bytes, index);
        let mut end = numeric_end;
        let letters = bytes[end..]
            .iter()
            .take_while(|byte| byte.is_ascii_alphabetic())
            .count();
        let after_letters_is_boundary = !bytes
            .get(end + letters)
            .is_some_and(u8::is_ascii_alphanumeric);
        if bytes.get(end) == Some(&b'%') {
            end += 1;
        } else if (1..=3).contains(&letters) && after_letters_is_boundary {
            end += letters;
        }
        let numeric_text = &question[index..numeric_end];
        let suffix = &question[numeric_end..end];
        let kind = if is_year(numeric_text) && (suffix.is_empty() || suffix == "s") {
            EntityKind::Date
        } else {
            EntityKind::Number
        };
        candidates.push(Candidate {
            start: index,
            end,
            kind,
        });
        index = end.max(index + 1);
    }
}

/// ISO dates ("2021-03-04") and slash dates ("3/4/2021", "03/04/21").
pub(super) fn find_numeric_dates(question: &str, candidates: &mut Vec<Candidate>) {
    let bytes = question.as_bytes();
    for start in 0..bytes.len() {
        if !bytes[start].is_ascii_digit()
            || previous_char(question, start).is_some_and(char::is_alphanumeric)
        {
            continue;
        }
        if let Some(end) = match_digit_groups(bytes, start, b'-', [4, 2, 2], [4, 2, 2]) {
            candidates.push(Candidate {
                start,
                end,
                kind: EntityKind::Date,
            });
        } else if let Some(end) = match_digit_groups(bytes, start, b'/', [1, 1, 2], [2, 2, 4]) {
            candidates.push(Candidate {
                start,
                end,
                kind: EntityKind::Date,
            });
        }
    }
}

/// Matches three digit groups separated by `separator`, each with a length in
/// `minimum[i]..=maximum[i]`, not followed by another alphanumeric character.
fn match_digit_groups(
    bytes: &[u8],
    start: usize,
    separator: u8,
    minimum: [usize; 3],
    maximum: [usize; 3],
) -> Option<usize> {
    let mut cursor = start;
    for group in 0..3 {
        if group > 0 {
            if bytes.get(cursor) != Some(&separator) {
                return None;
            }
            cursor += 1;
        }
        let digits = count_digits(bytes, cursor);
        if digits < minimum[group] || digits > maximum[group] {
            return None;
        }
        cursor += digits;
    }
    let followed_by_word = bytes.get(cursor).is_some_and(u8::is_ascii_alphanumeric);
    (!followed_by_word).then_some(cursor)
}

/// Month names, extended to "March 3, 2021", "March 2023", "3rd March 2021".
pub(super) fn find_month_dates(question: &str, words: &[Word], candidates: &mut Vec<Candidate>) {
    let bytes = question.as_bytes();
    for word in words {
        let lower = word.text.to_lowercase();
        if !MONTHS.contains(&lower.as_str()) || !word.text.is_ascii() {
            continue;
        }
        let capitalised = word.text.starts_with(|c: char| c.is_ascii_uppercase());
        let plausible = if capitalised {
            !(lower == "may" && word.sentence_initial)
        } else {
            !AMBIGUOUS_LOWERCASE_MONTHS.contains(&lower.as_str())
        };
        if !plausible {
            continue;
        }
        let end = extend_month_forward(bytes, word.end);
        let start = extend_month_backward(bytes, word.start);
        candidates.push(Candidate {
            start,
            end,
            kind: EntityKind::Date,
        });
    }
}

fn skip_spaces(bytes: &[u8], mut cursor: usize) -> usize {
    while bytes.get(cursor) == Some(&b' ') {
        cursor += 1;
    }
    cursor
}

/// Length of a day number with an optional ordinal suffix ("3", "21st"), or 0.
fn day_length(bytes: &[u8], start: usize) -> usize {
    let digits = count_digits(bytes, start);
    if !(1..=2).contains(&digits) {
        return 0;
    }
    let mut end = start + digits;
    let suffix = bytes.get(end..end + 2);
    if matches!(suffix, Some(b"st" | b"nd" | b"rd" | b"th")) {
        end += 2;
    }
    if bytes.get(end).is_some_and(u8::is_ascii_alphanumeric) {
        return 0;
    }
    end - start
}

fn year_length(bytes: &[u8], start: usize) -> usize {
    let digits = count_digits(bytes, start);
    let text = bytes
        .get(start..start + digits)
        .and_then(|slice| std::str::from_utf8(slice).ok());
    match text {
        Some(text)
            if is_year(text) && !bytes.get(start + 4).is_some_and(u8::is_ascii_alphanumeric) =>
        {
            4
        }
        _ => 0,
    }
}

fn extend_month_forward(bytes: &[u8], month_end: usize) -> usize {
    let mut end = month_end;
    let day_start = skip_spaces(bytes, end);
    let day = day_length(bytes, day_start);
    if day > 0 && day_start > end {
        end = day_start + day;
    }
    let mut year_start = end;
    if bytes.get(year_start) == Some(&b',') {
        year_start += 1;
    }
    year_start = skip_spaces(bytes, year_start);
    let year = year_length(bytes, year_start);
    if year > 0 && year_start > end {
        end = year_start + year;
    }
    end
}

fn extend_month_backward(bytes: &[u8], month_start: usize) -> usize {
    let mut cursor = month_start;
    while cursor > 0 && bytes[cursor - 1] == b' ' {
        cursor -= 1;
    }
    if cursor == month_start {
        return month_start;
    }
    let token_start = (0..cursor)
        .rev()
        .take_while(|&index| bytes[index].is_ascii_alphanumeric())
        .last();
    match token_start {
        Some(start) if day_length(bytes, start) == cursor - start => start,
        _ => month_start,
    }
}
