//! The numbered context handed to the generator: the best passages in order, numbered from
//! 1, until `max_context_chars` is spent; the last one is truncated at a word boundary.

use quarry_proto::v1::Passage;

use crate::fan_out::ShardedCandidate;

/// Smallest truncated passage worth keeping, in characters.
const MIN_TRUNCATED_CHARS: usize = 80;

pub fn build_context(candidates: &[ShardedCandidate], max_context_chars: usize) -> Vec<Passage> {
    let mut passages = Vec::new();
    let mut remaining = max_context_chars;
    for sharded in candidates {
        if remaining == 0 {
            break;
        }
        let candidate = &sharded.candidate;
        let length = candidate.text.chars().count();
        let text = if length <= remaining {
            candidate.text.clone()
        } else if remaining >= MIN_TRUNCATED_CHARS {
            truncate_at_word(&candidate.text, remaining)
        } else {
            break;
        };
        remaining = remaining.saturating_sub(text.chars().count());
        passages.push(Passage {
            number: passages.len() as u32 + 1,
            doc_id: candidate.doc_id.clone(),
            title: candidate.title.clone(),
            text,
            score: candidate.score,
        });
    }
    passages
}

/// At most `max_chars` characters of `text`, cut after the last whole word.
fn truncate_at_word(text: &str, max_chars: usize) -> String {
    let cut: String = text.chars().take(max_chars).collect();
    match cut.rfind(char::is_whitespace) {
        Some(position) if position > 0 => cut[..position].trim_end().to_string(),
        _ => cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fan_out::Candidate;

    fn candidate(id: &str, text: &str) -> ShardedCandidate {
        ShardedCandidate {
            shard: 0,
            candidate: Candidate {
                doc_id: id.to_string(),
                title: String::new(),
                text: text.to_string(),
                score: 1.0,
                ..Candidate::default()
            },
        }
    }

    #[test]
    fn passages_are_numbered_and_the_last_is_truncated() {
        let long = "word ".repeat(100);
        let candidates = [
            candidate("a", "short one"),
            candidate("b", &long),
            candidate("c", "never"),
        ];
        let passages = build_context(&candidates, 200);
        assert_eq!(passages.len(), 2);
        assert_eq!(passages[0].number, 1);
        assert_eq!(passages[1].number, 2);
        assert_eq!(passages[1].doc_id, "b");
        let total: usize = passages.iter().map(|p| p.text.chars().count()).sum();
        assert!(total <= 200);
        assert!(passages[1].text.ends_with("word"));
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let text = "日本語のテキスト ".repeat(50);
        let passages = build_context(&[candidate("a", &text)], 100);
        assert!(passages[0].text.chars().count() <= 100);
    }
}
