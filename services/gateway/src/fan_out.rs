//! The query path across shards, query then fetch: every shard answers ids and raw scores
//! (keyword, vector and each entity sub-query's list, in one request); the gateway merges
//! and fuses them and cuts to k; then it fetches the stored fields of those k only, one
//! batched `Fetch` per shard that holds any of them.
//!
//! Keyword scores use cluster-wide BM25 statistics, so rankings do not depend on the shard
//! count, without a statistics round trip per query in the steady state:
//! - one shard: its own statistics are the cluster's; nothing is collected;
//! - several: each shard's statistics of the query's terms are cached at the gateway by
//!   query (`StatisticsCache`); a search sends the sums plus, to each shard, the statistics
//!   it is assumed to have. A shard whose own differ (a write changed them) answers
//!   `stale` with its current ones instead of searching; the gateway updates its cache and
//!   searches every shard again with the new sums (a second round, at most one). A query
//!   not in the cache collects statistics first (`CollectStats`), as before.
//!
//! Each phase gets a share of what is left of the retrieval's time (`Budget`), so that a
//! slow statistics phase leaves time to search and a partial answer stays an answer.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use moka::sync::Cache;
use quarry_kit::placement::Placement;
use quarry_proto::v1::{
    CollectStatsRequest, CorpusStats, Document, FetchRequest, ShardSearchRequest, TermStats,
};
use tracing::warn;

use crate::deadline::Budget;
use crate::metrics::metrics;
use crate::shard_client::{ShardCall, ShardClient, ShardReply};

/// Share of the time left that collecting statistics may take.
const STATISTICS_SHARE: f64 = 0.25;
/// Share of the time left that one search round may take; fetching gets the rest.
const SEARCH_SHARE: f64 = 0.7;
/// Share of the time left that the second search round (after a stale answer) may take:
/// more than the first's, which already spent part of the budget.
const REFRESH_SHARE: f64 = 0.85;
/// Bytes the statistics cache may hold (approximately: terms and counts).
const STATISTICS_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Fetch calls to one shard for one query, at most (a reply that outgrows the message
/// limit names the ids it left out, which are asked for again).
const MAX_FETCH_ROUNDS: usize = 64;

/// A ranked document at the gateway: id and score from the search, title and text once
/// fetched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidate {
    pub doc_id: String,
    pub score: f64,
    pub title: String,
    pub text: String,
    /// The document's metadata, a JSON object; empty for none.
    pub metadata_json: String,
}

/// A candidate with the shard it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardedCandidate {
    pub shard: u32,
    pub candidate: Candidate,
}

/// What to ask every shard for.
#[derive(Debug, Clone, Default)]
pub struct FanOutRequest {
    pub collection: String,
    pub filter: Option<quarry_proto::v1::Filter>,
    pub query: String,
    pub keyword_k: u32,
    pub vector_k: u32,
    pub query_vector: Vec<f32>,
    /// Keyword-only sub-queries searched in the same request, each cut to `sub_query_k`.
    pub sub_queries: Vec<String>,
    pub sub_query_k: u32,
}

impl FanOutRequest {
    fn wants_keywords(&self) -> bool {
        self.keyword_k > 0 || !self.sub_queries.is_empty()
    }

    /// The statistics cache key: the query and its sub-queries.
    fn statistics_key(&self) -> String {
        let mut key = self.collection.clone();
        key.push('\u{1e}');
        key.push_str(&self.query);
        for sub_query in &self.sub_queries {
            key.push('\u{1f}');
            key.push_str(sub_query);
        }
        key
    }
}

/// Where the keyword statistics of a search came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatisticsSource {
    /// No keyword search, or one shard (its own statistics are the cluster's).
    #[default]
    NotNeeded,
    /// The cache, and every shard confirmed them.
    Cached,
    /// A `CollectStats` round trip.
    Collected,
    /// The cache, but some shard had changed: searched again with its new statistics.
    Refreshed,
}

impl StatisticsSource {
    pub fn metric_label(self) -> Option<&'static str> {
        match self {
            StatisticsSource::NotNeeded => None,
            StatisticsSource::Cached => Some("cached"),
            StatisticsSource::Collected => Some("collected"),
            StatisticsSource::Refreshed => Some("refreshed"),
        }
    }
}

/// What the search phase gathered.
#[derive(Debug, Default)]
pub struct FanOutResult {
    pub shards_total: u32,
    pub shards_failed: Vec<u32>,
    /// Every shard's keyword candidates, best first globally.
    pub keyword: Vec<ShardedCandidate>,
    /// Every shard's vector candidates, best first globally.
    pub vector: Vec<ShardedCandidate>,
    /// Per sub-query, every shard's candidates, best first globally.
    pub sub_queries: Vec<Vec<ShardedCandidate>>,
    /// Hedged shard calls.
    pub hedges: u32,
    pub statistics: StatisticsSource,
    /// A shard refused the placement used (the newest epoch it named): route again.
    pub moved: Option<u64>,
}

impl FanOutResult {
    pub fn shards_answered(&self) -> u32 {
        self.shards_total - self.shards_failed.len() as u32
    }
}

/// Each shard's statistics of a query's terms (index = shard), by query; bounded by bytes.
pub struct StatisticsCache {
    entries: Cache<String, Arc<Vec<CorpusStats>>>,
}

impl Default for StatisticsCache {
    fn default() -> Self {
        Self::new(STATISTICS_CACHE_BYTES)
    }
}

impl StatisticsCache {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &String, value: &Arc<Vec<CorpusStats>>| {
                    let terms: usize = value
                        .iter()
                        .flat_map(|stats| &stats.terms)
                        .map(|term| term.term.len() + 16)
                        .sum();
                    (key.len() + terms + 16 * value.len()).min(u32::MAX as usize) as u32
                })
                .build(),
        }
    }

    fn get(&self, key: &str, shards: u32) -> Option<Arc<Vec<CorpusStats>>> {
        self.entries
            .get(key)
            .filter(|per_shard| per_shard.len() == shards as usize)
    }

    fn insert(&self, key: String, per_shard: Vec<CorpusStats>) {
        self.entries.insert(key, Arc::new(per_shard));
    }
}

/// Searches every shard that owns partitions in `placement`, each for exactly those, for
/// ids and scores (the module says how statistics are found).
pub async fn search_shards(
    client: &ShardClient,
    cache: &StatisticsCache,
    request: &FanOutRequest,
    placement: &Placement,
    budget: Budget,
) -> FanOutResult {
    let serving = placement.serving_shards();
    let shards_total = serving.len() as u32;
    // Per-shard lists are indexed by shard number.
    let slots = placement.shard_count().max(1);
    let partitions_of = |shard: u32| placement.owned_by(shard);
    let epoch = placement.epoch;
    let mut failed: BTreeSet<u32> = BTreeSet::new();
    let mut hedges = 0;
    let mut moved = None;
    let mut asking: Vec<u32> = serving.clone();
    let mut statistics = StatisticsSource::NotNeeded;
    // Each asked shard's statistics; the sums of these are the cluster's.
    let mut per_shard: Option<Vec<CorpusStats>> = None;
    // Statistics belong to one placement: another splits the same documents otherwise.
    let key = format!("{}\u{1d}{epoch}", request.statistics_key());
    if request.wants_keywords() && shards_total > 1 {
        if let Some(cached) = cache.get(&key, slots) {
            per_shard = Some(cached.as_ref().clone());
            statistics = StatisticsSource::Cached;
        } else {
            let calls = asking
                .iter()
                .map(|shard| {
                    let call = ShardCall::CollectStats(CollectStatsRequest {
                        query: request.query.clone(),
                        sub_queries: request.sub_queries.clone(),
                        collection: request.collection.clone(),
                        partitions: partitions_of(*shard),
                        placement_epoch: epoch,
                    });
                    (*shard, call)
                })
                .collect();
            let phase = client
                .call_each(calls, budget.share(STATISTICS_SHARE))
                .await;
            hedges += phase.hedges;
            moved = moved.max(phase.moved);
            failed.extend(&phase.failed);
            let mut collected = vec![CorpusStats::default(); slots as usize];
            for (shard, reply) in phase.answered {
                if let ShardReply::CollectStats(stats) = reply {
                    collected[shard as usize] = stats;
                }
            }
            if phase.failed.is_empty() {
                cache.insert(key.clone(), collected.clone());
            }
            asking.retain(|shard| !failed.contains(shard));
            per_shard = Some(collected);
            statistics = StatisticsSource::Collected;
        }
    }
    let mut replies = Vec::new();
    for round in 0..2 {
        let expect = round == 0 && statistics == StatisticsSource::Cached;
        let global = per_shard.as_ref().map(|per_shard| {
            sum_statistics(asking.iter().map(|shard| &per_shard[*shard as usize]))
        });
        let calls = asking
            .iter()
            .map(|shard| {
                let expected_local_stats = match (&per_shard, expect) {
                    (Some(per_shard), true) => Some(per_shard[*shard as usize].clone()),
                    _ => None,
                };
                let call = ShardCall::Search(Box::new(ShardSearchRequest {
                    query: request.query.clone(),
                    keyword_k: request.keyword_k,
                    vector_k: request.vector_k,
                    query_vector: request.query_vector.clone(),
                    global_stats: global.clone(),
                    sub_queries: request.sub_queries.clone(),
                    sub_query_k: request.sub_query_k,
                    expected_local_stats,
                    collection: request.collection.clone(),
                    filter: request.filter.clone(),
                    partitions: partitions_of(*shard),
                    placement_epoch: epoch,
                }));
                (*shard, call)
            })
            .collect();
        let share = if round == 0 {
            SEARCH_SHARE
        } else {
            REFRESH_SHARE
        };
        let phase = client.call_each(calls, budget.share(share)).await;
        hedges += phase.hedges;
        moved = moved.max(phase.moved);
        failed.extend(&phase.failed);
        asking.retain(|shard| !failed.contains(shard));
        let mut stale = false;
        replies.clear();
        for (shard, reply) in phase.answered {
            let ShardReply::Search(response) = reply else {
                continue;
            };
            if response.stale {
                stale = true;
                if let (Some(per_shard), Some(local)) = (per_shard.as_mut(), response.local_stats) {
                    per_shard[shard as usize] = local;
                }
            } else {
                replies.push((shard, response));
            }
        }
        if !stale {
            break;
        }
        if let Some(per_shard) = &per_shard {
            if failed.is_empty() {
                cache.insert(key.clone(), per_shard.clone());
            }
        }
        statistics = StatisticsSource::Refreshed;
    }
    if let Some(source) = statistics.metric_label() {
        metrics().statistics.with_label_values(&[source]).inc();
    }
    let mut keyword = Vec::new();
    let mut vector = Vec::new();
    let mut sub_queries: Vec<Vec<ShardedCandidate>> = vec![Vec::new(); request.sub_queries.len()];
    for (shard, response) in replies {
        let tag = |candidate: quarry_proto::v1::Candidate| ShardedCandidate {
            shard,
            candidate: Candidate {
                doc_id: candidate.doc_id,
                score: candidate.score,
                ..Candidate::default()
            },
        };
        keyword.extend(response.keyword.into_iter().map(tag));
        vector.extend(response.vector.into_iter().map(tag));
        for (list, merged) in response.sub_queries.into_iter().zip(sub_queries.iter_mut()) {
            merged.extend(list.candidates.into_iter().map(tag));
        }
    }
    sort_best_first(&mut keyword);
    sort_best_first(&mut vector);
    for list in &mut sub_queries {
        sort_best_first(list);
    }
    let shards_failed: Vec<u32> = failed.into_iter().collect();
    let gateway_metrics = metrics();
    gateway_metrics.shards_asked.inc_by(u64::from(shards_total));
    gateway_metrics
        .shards_answered
        .inc_by(u64::from(shards_total - shards_failed.len() as u32));
    FanOutResult {
        shards_total,
        shards_failed,
        keyword,
        vector,
        sub_queries,
        hedges,
        statistics,
        moved,
    }
}

/// The fetched hits and how the fetch went.
#[derive(Debug, Default)]
pub struct Fetched {
    /// The hits in their order, with title and text; a hit whose document is gone (deleted
    /// since the search) or whose shard did not answer is left out.
    pub hits: Vec<ShardedCandidate>,
    pub shards_failed: Vec<u32>,
    pub hedges: u32,
    /// A shard no longer serves a hit's partition at the placement searched with.
    pub moved: Option<u64>,
}

/// Fetches title and text of `hits`: one batched `Fetch` per shard holding any of them, all
/// at once, under what is left of `budget`; each shard is asked as of `placement_epoch`,
/// the epoch the hits were searched at.
pub async fn fetch_stored(
    client: &ShardClient,
    collection: &str,
    hits: Vec<ShardedCandidate>,
    placement_epoch: u64,
    budget: Budget,
) -> Fetched {
    let mut wanted: HashMap<u32, Vec<String>> = HashMap::new();
    for hit in &hits {
        let ids = wanted.entry(hit.shard).or_default();
        if !ids.contains(&hit.candidate.doc_id) {
            ids.push(hit.candidate.doc_id.clone());
        }
    }
    let mut stored: HashMap<(u32, String), Document> = HashMap::new();
    let mut failed = BTreeSet::new();
    let mut hedges = 0;
    let mut moved = None;
    for _ in 0..MAX_FETCH_ROUNDS {
        if wanted.is_empty() {
            break;
        }
        let asked: HashMap<u32, Vec<String>> = std::mem::take(&mut wanted);
        let calls = asked
            .iter()
            .map(|(shard, ids)| {
                let request = FetchRequest {
                    ids: ids.clone(),
                    collection: collection.to_string(),
                    placement_epoch,
                };
                (*shard, ShardCall::Fetch(request))
            })
            .collect();
        let phase = client.call_each(calls, budget.remaining()).await;
        hedges += phase.hedges;
        moved = moved.max(phase.moved);
        failed.extend(phase.failed);
        for (shard, reply) in phase.answered {
            let ShardReply::Fetch(response) = reply else {
                continue;
            };
            for document in response.documents {
                stored.insert((shard, document.id.clone()), document);
            }
            // The ids a reply did not get to are the last `ids_left` asked; a reply that got
            // to none of them is a failure, not a reason to ask forever.
            let Some(ids) = asked.get(&shard) else {
                continue;
            };
            let left = (response.ids_left as usize).min(ids.len());
            match left {
                0 => {}
                left if left == ids.len() => {
                    failed.insert(shard);
                }
                left => {
                    wanted.insert(shard, ids[ids.len() - left..].to_vec());
                }
            }
        }
    }
    if !wanted.is_empty() {
        warn!(
            shards = wanted.len(),
            "fetch rounds exhausted; hits left out"
        );
        failed.extend(wanted.keys());
    }
    let hits = hits
        .into_iter()
        .filter_map(|mut hit| {
            let document = stored.get(&(hit.shard, hit.candidate.doc_id.clone()))?;
            hit.candidate.title = document.title.clone();
            hit.candidate.text = document.text.clone();
            hit.candidate.metadata_json = document.metadata_json.clone();
            Some(hit)
        })
        .collect();
    Fetched {
        hits,
        shards_failed: failed.into_iter().collect(),
        hedges,
        moved,
    }
}

/// Sums shard statistics into cluster-wide ones.
pub fn sum_statistics<'a>(per_shard: impl IntoIterator<Item = &'a CorpusStats>) -> CorpusStats {
    let mut total = CorpusStats::default();
    let mut doc_freqs: std::collections::BTreeMap<&str, u64> = Default::default();
    for stats in per_shard {
        total.num_docs += stats.num_docs;
        total.total_num_tokens += stats.total_num_tokens;
        for term in &stats.terms {
            *doc_freqs.entry(term.term.as_str()).or_default() += term.doc_freq;
        }
    }
    total.terms = doc_freqs
        .into_iter()
        .map(|(term, doc_freq)| TermStats {
            term: term.to_string(),
            doc_freq,
        })
        .collect();
    total
}

/// Best score first, ties in the order every shard cuts by (`quarry_kit::ranking`), so
/// that the merged order never depends on shard layout.
pub fn sort_best_first(candidates: &mut [ShardedCandidate]) {
    candidates.sort_by(|left, right| {
        quarry_kit::ranking::compare_best_first(
            left.candidate.score,
            &left.candidate.doc_id,
            right.candidate.score,
            &right.candidate.doc_id,
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(num_docs: u64, tokens: u64, terms: &[(&str, u64)]) -> CorpusStats {
        CorpusStats {
            num_docs,
            total_num_tokens: tokens,
            terms: terms
                .iter()
                .map(|(term, doc_freq)| TermStats {
                    term: term.to_string(),
                    doc_freq: *doc_freq,
                })
                .collect(),
        }
    }

    #[test]
    fn statistics_sum_across_shards() {
        let total = sum_statistics(&[
            stats(10, 100, &[("cell", 3), ("gene", 1)]),
            stats(5, 40, &[("cell", 2)]),
        ]);
        assert_eq!(total, stats(15, 140, &[("cell", 5), ("gene", 1)]));
    }

    #[test]
    fn merge_order_is_by_score_then_tie_key() {
        let candidate = |shard, id: &str, score| ShardedCandidate {
            shard,
            candidate: Candidate {
                doc_id: id.to_string(),
                score,
                ..Candidate::default()
            },
        };
        let mut merged = vec![
            candidate(0, "b", 1.0),
            candidate(1, "c", 3.0),
            candidate(2, "a", 1.0),
        ];
        sort_best_first(&mut merged);
        let ids: Vec<&str> = merged.iter().map(|c| c.candidate.doc_id.as_str()).collect();
        let (first_tied, second_tied) =
            if quarry_kit::ranking::tie_key("a") < quarry_kit::ranking::tie_key("b") {
                ("a", "b")
            } else {
                ("b", "a")
            };
        assert_eq!(ids, ["c", first_tied, second_tied]);
    }
}
