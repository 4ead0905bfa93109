//! Tie-aware cuts of ranked lists: a shard's top k must not depend on the order of equally
//! scored documents inside it, or splitting a corpus into shards would change rankings.

use crate::error::RetrieverError;
use crate::shard::ShardCandidate;

/// The best `k` of a ranked source, extended past `k` while the scores tie with the k-th,
/// so that which of several equally scored documents make the cut does not depend on their
/// order inside this shard (the caller then breaks ties by id, as the gateway does).
pub(crate) fn top_with_ties<T>(
    k: usize,
    mut fetch: impl FnMut(usize) -> Result<Vec<(f32, T)>, RetrieverError>,
) -> Result<Vec<(f32, T)>, RetrieverError> {
    let mut limit = k;
    loop {
        let ranked = fetch(limit)?;
        let exhausted = ranked.len() < limit;
        let tied_at_the_cut = ranked.len() >= k
            && ranked.last().map(|last| last.0) == ranked.get(k - 1).map(|kth| kth.0);
        if exhausted || !tied_at_the_cut {
            return Ok(ranked);
        }
        limit = limit.saturating_mul(2);
    }
}

/// Best score first, ties by id, cut to `k`.
pub(crate) fn best_k_by_score_then_id(
    mut candidates: Vec<ShardCandidate>,
    k: usize,
) -> Vec<ShardCandidate> {
    candidates.sort_by(|left, right| {
        right
            .score
            .total_cmp(&left.score)
            .then_with(|| left.doc_id.cmp(&right.doc_id))
    });
    candidates.truncate(k);
    candidates
}
