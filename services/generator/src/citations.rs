//! Reading a model's `[n]` citations: markers like `[2]`, `[1, 3]` or `[1][4]` are mapped to
//! passage numbers; a number naming no passage is dropped and counted.

use std::collections::BTreeSet;

/// Longest text between `[` and `]` still read as a citation marker, in bytes.
const MAX_MARKER_BODY_BYTES: usize = 32;

/// The citations of one answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Citations {
    /// Passage numbers cited that exist, ascending, deduplicated.
    pub cited: Vec<u32>,
    /// Numbers cited that name no passage, in order of appearance, deduplicated.
    pub dropped: Vec<u32>,
}

/// Finds the `[n]` markers of `answer`; `exists(n)` says whether passage `n` was given.
/// Brackets holding anything but numbers separated by commas or spaces are not citations.
pub fn parse_citations(answer: &str, exists: impl Fn(u32) -> bool) -> Citations {
    let mut cited = BTreeSet::new();
    let mut dropped = Vec::new();
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        let after_open = &rest[open + 1..];
        let Some(close) = after_open.find(']') else {
            break;
        };
        let body = &after_open[..close];
        rest = &after_open[close + 1..];
        if body.is_empty() || body.len() > MAX_MARKER_BODY_BYTES {
            continue;
        }
        let numbers: Option<Vec<u32>> = body
            .split([',', ' '])
            .filter(|piece| !piece.is_empty())
            .map(|piece| piece.parse::<u32>().ok())
            .collect();
        let Some(numbers) = numbers else {
            continue;
        };
        for number in numbers {
            if exists(number) {
                cited.insert(number);
            } else if !dropped.contains(&number) {
                dropped.push(number);
            }
        }
    }
    Citations {
        cited: cited.into_iter().collect(),
        dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_map_to_existing_passages_and_the_rest_are_dropped() {
        let answer = "Insulin lowers glucose [2]. It is made in the pancreas [1, 3][2]. \
                      See also [7] and [0]; arrays like a[i] or [note] are not citations [9] [7].";
        let citations = parse_citations(answer, |number| (1..=3).contains(&number));
        assert_eq!(citations.cited, vec![1, 2, 3]);
        assert_eq!(citations.dropped, vec![7, 0, 9]);
    }

    #[test]
    fn odd_text_has_no_citations() {
        for answer in [
            "",
            "[",
            "]",
            "[]",
            "[ ]",
            "[1",
            "no markers",
            "[99999999999999999999]",
        ] {
            let citations = parse_citations(answer, |_| true);
            assert!(citations.cited.is_empty(), "{answer:?}");
        }
        assert_eq!(parse_citations("[1][1] [1]", |_| true).cited, vec![1]);
    }
}
