//! Cuts of ranked lists that do not depend on how the corpus is split into shards: equally
//! scored documents are ordered by a stable key of their id (`tie_key`, the same xxh3 hash
//! the vector index uses), inside tantivy's collector for BM25, so that which of several
//! tied documents make a shard's top k is decided as the gateway's global merge decides it,
//! at the cost of any other query: no search is re-run with a larger limit and no tied
//! document is loaded.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::query::Weight;
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader};

use crate::error::RetrieverError;
use crate::shard::ShardCandidate;

/// One collected document: its score, its tie key and where it lives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ranked {
    pub score: Score,
    pub key: u64,
    pub address: DocAddress,
}

/// Better first: higher score, then lower key.
fn better_first(left: &Ranked, right: &Ranked) -> Ordering {
    right
        .score
        .total_cmp(&left.score)
        .then_with(|| left.key.cmp(&right.key))
}

/// Orders a max-heap so that its top is the worst entry kept.
struct WorstOnTop(Ranked);

impl PartialEq for WorstOnTop {
    fn eq(&self, other: &Self) -> bool {
        better_first(&self.0, &other.0) == Ordering::Equal
    }
}

impl Eq for WorstOnTop {}

impl PartialOrd for WorstOnTop {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for WorstOnTop {
    fn cmp(&self, other: &Self) -> Ordering {
        better_first(&self.0, &other.0)
    }
}

/// The best `limit` documents by score, ties by the fast field `key_field` (a u64 column
/// holding `tie_key(id)`); BM25's block-max WAND still skips what cannot make the cut.
pub(crate) struct TopByScoreThenKey {
    pub limit: usize,
    pub key_field: &'static str,
}

pub(crate) struct SegmentTop {
    segment: SegmentOrdinal,
    keys: Column<u64>,
    limit: usize,
    heap: BinaryHeap<WorstOnTop>,
}

impl SegmentTop {
    /// Offers a document; returns the score a later document must beat or tie to matter.
    fn offer(&mut self, doc: DocId, score: Score) -> Score {
        if self.limit == 0 {
            return Score::MAX;
        }
        let entry = Ranked {
            score,
            key: self.keys.first(doc).unwrap_or(u64::MAX),
            address: DocAddress::new(self.segment, doc),
        };
        if self.heap.len() < self.limit {
            self.heap.push(WorstOnTop(entry));
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if better_first(&entry, &worst.0) == Ordering::Less {
                *worst = WorstOnTop(entry);
            }
        }
        self.threshold()
    }

    /// Pruning hands over only scores above the threshold: once full, just below the worst
    /// kept score, so that a document tying it can still win on its key.
    fn threshold(&self) -> Score {
        match self.heap.peek() {
            Some(worst) if self.heap.len() == self.limit => just_below(worst.0.score),
            _ => Score::MIN,
        }
    }
}

/// The largest f32 below `score` (scores are finite).
fn just_below(score: Score) -> Score {
    if score.is_nan() || score == Score::MIN {
        return Score::MIN;
    }
    score.next_down()
}

impl SegmentCollector for SegmentTop {
    type Fruit = Vec<Ranked>;

    fn collect(&mut self, doc: DocId, score: Score) {
        self.offer(doc, score);
    }

    fn harvest(self) -> Vec<Ranked> {
        self.heap.into_iter().map(|entry| entry.0).collect()
    }
}

impl Collector for TopByScoreThenKey {
    type Fruit = Vec<Ranked>;
    type Child = SegmentTop;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<SegmentTop> {
        Ok(SegmentTop {
            segment,
            keys: reader.fast_fields().u64(self.key_field)?,
            limit: self.limit,
            heap: BinaryHeap::with_capacity(self.limit.min(4096)),
        })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, fruits: Vec<Vec<Ranked>>) -> tantivy::Result<Vec<Ranked>> {
        let mut merged: Vec<Ranked> = fruits.into_iter().flatten().collect();
        merged.sort_by(better_first);
        merged.truncate(self.limit);
        Ok(merged)
    }

    fn collect_segment(
        &self,
        weight: &dyn Weight,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<Vec<Ranked>> {
        let mut top = self.for_segment(segment, reader)?;
        match reader.alive_bitset() {
            None => weight
                .for_each_pruning(Score::MIN, reader, &mut |doc, score| top.offer(doc, score))?,
            Some(alive) => weight.for_each_pruning(Score::MIN, reader, &mut |doc, score| {
                if alive.is_alive(doc) {
                    top.offer(doc, score)
                } else {
                    top.threshold()
                }
            })?,
        }
        Ok(top.harvest())
    }
}

/// The best `k` of a ranked source of `(score, key)` pairs that cannot order ties itself
/// (the vector index), extended past `k` while scores tie with the k-th, then cut by score
/// and key. Only documents with identical vectors tie, so this rarely asks twice.
pub(crate) fn top_with_ties(
    k: usize,
    mut fetch: impl FnMut(usize) -> Result<Vec<(f32, u64)>, RetrieverError>,
) -> Result<Vec<(f32, u64)>, RetrieverError> {
    let mut limit = k;
    loop {
        let mut ranked = fetch(limit)?;
        let exhausted = ranked.len() < limit;
        let tied_at_the_cut = ranked.len() >= k
            && k > 0
            && ranked.last().map(|last| last.0) == ranked.get(k - 1).map(|kth| kth.0);
        if exhausted || !tied_at_the_cut {
            ranked.sort_by(|left, right| right.0.total_cmp(&left.0).then(left.1.cmp(&right.1)));
            ranked.truncate(k);
            return Ok(ranked);
        }
        limit = limit.saturating_mul(2);
    }
}

/// Best score first, ties by `tie_key`, then id; cut to `k`.
pub(crate) fn best_k(mut candidates: Vec<ShardCandidate>, k: usize) -> Vec<ShardCandidate> {
    candidates.sort_by(|left, right| {
        quarry_kit::ranking::compare_best_first(
            left.score,
            &left.doc_id,
            right.score,
            &right.doc_id,
        )
    });
    candidates.truncate(k);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_kit::ranking::tie_key;

    #[test]
    fn the_stored_vector_key_is_the_tie_key() {
        for id in ["a", "doc-17", "ünïcode"] {
            assert_eq!(crate::vectors::vector_key(id), tie_key(id));
        }
    }

    #[test]
    fn the_threshold_lets_ties_with_the_worst_kept_score_through() {
        assert!(just_below(2.0) < 2.0);
        assert_eq!(just_below(2.0).next_up(), 2.0);
        assert_eq!(just_below(Score::MIN), Score::MIN);
    }
}
