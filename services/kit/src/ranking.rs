//! The one order of ranked documents that every shard and gateway agree on: higher score
//! first, equal scores by `tie_key` of the id (lower first), then by id. A shard cuts its
//! lists in this order inside its collector and the gateway merges in it, so that which of
//! several equally scored documents make a top k never depends on how the corpus is split.

use std::cmp::Ordering;

use xxhash_rust::xxh3::xxh3_64;

/// The stable key that orders equally scored documents: xxh3 of the id, the same hash a
/// retriever stores as each document's vector key.
pub fn tie_key(doc_id: &str) -> u64 {
    xxh3_64(doc_id.as_bytes())
}

/// `Less` when `(left_score, left_id)` ranks before `(right_score, right_id)`.
pub fn compare_best_first(
    left_score: f64,
    left_id: &str,
    right_score: f64,
    right_id: &str,
) -> Ordering {
    right_score
        .total_cmp(&left_score)
        .then_with(|| tie_key(left_id).cmp(&tie_key(right_id)))
        .then_with(|| left_id.cmp(right_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_decides_then_the_key_then_the_id() {
        assert_eq!(compare_best_first(2.0, "b", 1.0, "a"), Ordering::Less);
        let (low, high) = if tie_key("a") < tie_key("b") {
            ("a", "b")
        } else {
            ("b", "a")
        };
        assert_eq!(compare_best_first(1.0, low, 1.0, high), Ordering::Less);
        assert_eq!(compare_best_first(1.0, "a", 1.0, "a"), Ordering::Equal);
    }
}
