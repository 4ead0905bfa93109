//! The fan-out: ask every shard for its statistics of the query, sum them, then search every
//! shard in parallel with the sums (so scores are shard-count independent), each call under
//! a deadline and retried once on another replica; shards that do not answer are reported.

use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use quarry_proto::v1::retriever_client::RetrieverClient;
use quarry_proto::v1::{
    Candidate, CollectStatsRequest, CorpusStats, ShardSearchRequest, TermStats,
};
use tonic::transport::Channel;
use tonic::{Response, Status};
use tracing::warn;

use crate::error::GatewayError;
use crate::gateway::Gateway;

/// A candidate with the shard it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardedCandidate {
    pub shard: u32,
    pub candidate: Candidate,
}

/// What to ask every shard for.
#[derive(Debug, Clone, Default)]
pub struct FanOutRequest {
    pub query: String,
    pub keyword_k: u32,
    pub vector_k: u32,
    pub query_vector: Vec<f32>,
}

/// What the fan-out gathered.
#[derive(Debug, Default)]
pub struct FanOutResult {
    pub shards_total: u32,
    pub shards_failed: Vec<u32>,
    /// Every shard's keyword candidates, best first globally.
    pub keyword: Vec<ShardedCandidate>,
    /// Every shard's vector candidates, best first globally.
    pub vector: Vec<ShardedCandidate>,
}

impl FanOutResult {
    pub fn shards_answered(&self) -> u32 {
        self.shards_total - self.shards_failed.len() as u32
    }
}

impl Gateway {
    /// Searches every shard; keyword candidates are scored with cluster-wide statistics,
    /// collected first (skipped when no keyword candidates are wanted).
    pub(crate) async fn fan_out(&self, request: &FanOutRequest, timeout: Duration) -> FanOutResult {
        let shards_total = self.clients.shard_count();
        let mut shards_failed = Vec::new();
        let (answering, global) = if request.keyword_k > 0 {
            let (answering, failed, global) =
                self.collect_statistics(&request.query, timeout).await;
            shards_failed = failed;
            (answering, Some(global))
        } else {
            ((0..shards_total).collect(), None)
        };
        let search_calls = answering.into_iter().map(|shard| {
            let shard_request = ShardSearchRequest {
                query: request.query.clone(),
                keyword_k: request.keyword_k,
                vector_k: request.vector_k,
                query_vector: request.query_vector.clone(),
                global_stats: global.clone(),
            };
            async move {
                let response = self
                    .call_shard(shard, timeout, move |mut client| {
                        let shard_request = shard_request.clone();
                        async move { client.search(shard_request).await }
                    })
                    .await;
                (shard, response)
            }
        });
        let mut keyword = Vec::new();
        let mut vector = Vec::new();
        for (shard, outcome) in join_all(search_calls).await {
            match outcome {
                Ok(response) => {
                    let tag = |candidate| ShardedCandidate { shard, candidate };
                    keyword.extend(response.keyword.into_iter().map(tag));
                    vector.extend(response.vector.into_iter().map(tag));
                }
                Err(error) => {
                    warn!(shard, error = %error, "shard did not answer search");
                    shards_failed.push(shard);
                }
            }
        }
        shards_failed.sort_unstable();
        sort_best_first(&mut keyword);
        sort_best_first(&mut vector);
        FanOutResult {
            shards_total,
            shards_failed,
            keyword,
            vector,
        }
    }

    /// Every shard's statistics of the query, summed; returns the shards that answered,
    /// those that did not, and the sums.
    async fn collect_statistics(
        &self,
        query: &str,
        timeout: Duration,
    ) -> (Vec<u32>, Vec<u32>, CorpusStats) {
        let stats_calls = (0..self.clients.shard_count()).map(|shard| {
            let request = CollectStatsRequest {
                query: query.to_string(),
            };
            async move {
                let stats = self
                    .call_shard(shard, timeout, move |mut client| {
                        let request = request.clone();
                        async move { client.collect_stats(request).await }
                    })
                    .await;
                (shard, stats)
            }
        });
        let mut answering = Vec::new();
        let mut failed = Vec::new();
        let mut per_shard = Vec::new();
        for (shard, outcome) in join_all(stats_calls).await {
            match outcome {
                Ok(stats) => {
                    answering.push(shard);
                    per_shard.push(stats);
                }
                Err(error) => {
                    warn!(shard, error = %error, "shard did not answer statistics");
                    failed.push(shard);
                }
            }
        }
        (answering, failed, sum_statistics(&per_shard))
    }

    /// Calls one shard: each ready replica in turn until one answers, each try under `timeout`.
    pub(crate) async fn call_shard<T, F, Fut>(
        &self,
        shard: u32,
        timeout: Duration,
        call: F,
    ) -> Result<T, GatewayError>
    where
        F: Fn(RetrieverClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let replicas = self.clients.shard_replicas(shard);
        let mut last_error = GatewayError::NoMember { role: "retriever" };
        for replica in replicas {
            let client = self.clients.retriever(&replica)?;
            match tokio::time::timeout(timeout, call(client)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => {
                    if !is_retryable(&status) {
                        return Err(GatewayError::downstream("retriever", status));
                    }
                    last_error = GatewayError::downstream("retriever", status);
                }
                Err(_) => {
                    last_error = GatewayError::downstream(
                        "retriever",
                        Status::deadline_exceeded(format!("shard {shard} timed out")),
                    );
                }
            }
        }
        Err(last_error)
    }
}

/// Failures another replica might not have.
fn is_retryable(status: &Status) -> bool {
    !matches!(
        status.code(),
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::NotFound
    )
}

/// Sums shard statistics into cluster-wide ones.
pub fn sum_statistics(per_shard: &[CorpusStats]) -> CorpusStats {
    let mut total = CorpusStats::default();
    let mut doc_freqs: std::collections::BTreeMap<String, u64> = Default::default();
    for stats in per_shard {
        total.num_docs += stats.num_docs;
        total.total_num_tokens += stats.total_num_tokens;
        for term in &stats.terms {
            *doc_freqs.entry(term.term.clone()).or_default() += term.doc_freq;
        }
    }
    total.terms = doc_freqs
        .into_iter()
        .map(|(term, doc_freq)| TermStats { term, doc_freq })
        .collect();
    total
}

/// Best score first; ties broken by id so that the order never depends on shard layout.
pub fn sort_best_first(candidates: &mut [ShardedCandidate]) {
    candidates.sort_by(|left, right| {
        right
            .candidate
            .score
            .total_cmp(&left.candidate.score)
            .then_with(|| left.candidate.doc_id.cmp(&right.candidate.doc_id))
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
    fn merge_order_is_by_score_then_id() {
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
        assert_eq!(ids, ["c", "a", "b"]);
    }
}
