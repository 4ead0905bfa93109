//! The fan-out: ask every shard for its statistics of the query, sum them, then search every
//! shard in parallel with the sums (so scores are shard-count independent), each call under
//! a deadline and retried once on another replica; shards that do not answer are reported.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::join_all;
use quarry_kit::discovery::Member;
use quarry_kit::metrics::code_name;
use quarry_kit::telemetry::TracedChannel;
use quarry_proto::v1::retriever_client::RetrieverClient;
use quarry_proto::v1::{
    Candidate, CollectStatsRequest, CorpusStats, ShardSearchRequest, TermStats,
};
use tonic::{Response, Status};
use tracing::field::Empty;
use tracing::{warn, Instrument, Span};

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::metrics::metrics;

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
    /// Hedged shard calls.
    pub hedges: u32,
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
        let mut hedges = 0;
        let (answering, global) = if request.keyword_k > 0 {
            let (answering, failed, global, statistics_hedges) =
                self.collect_statistics(&request.query, timeout).await;
            shards_failed = failed;
            hedges += statistics_hedges;
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
                Ok(answer) => {
                    hedges += answer.hedges;
                    let response = answer.value;
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
        let shards_answered = shards_total - shards_failed.len() as u32;
        let gateway_metrics = metrics();
        gateway_metrics.shards_asked.inc_by(u64::from(shards_total));
        gateway_metrics
            .shards_answered
            .inc_by(u64::from(shards_answered));
        FanOutResult {
            shards_total,
            shards_failed,
            keyword,
            vector,
            hedges,
        }
    }

    /// Every shard's statistics of the query, summed; returns the shards that answered,
    /// those that did not, the sums, and the hedged calls.
    async fn collect_statistics(
        &self,
        query: &str,
        timeout: Duration,
    ) -> (Vec<u32>, Vec<u32>, CorpusStats, u32) {
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
        let mut hedges = 0;
        for (shard, outcome) in join_all(stats_calls).await {
            match outcome {
                Ok(answer) => {
                    answering.push(shard);
                    hedges += answer.hedges;
                    per_shard.push(answer.value);
                }
                Err(error) => {
                    warn!(shard, error = %error, "shard did not answer statistics");
                    failed.push(shard);
                }
            }
        }
        (answering, failed, sum_statistics(&per_shard), hedges)
    }

    /// Calls one shard: the best replica first, hedged on the next one when it outlives the
    /// shard's recent p95, then, on a failure another replica might not have, once more on a
    /// replica not yet tried; each try under `timeout`.
    pub(crate) async fn call_shard<T, F, Fut>(
        &self,
        shard: u32,
        timeout: Duration,
        call: F,
    ) -> Result<ShardAnswer<T>, GatewayError>
    where
        F: Fn(RetrieverClient<TracedChannel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let replicas = self.selector.order(self.clients.shard_replicas(shard));
        let Some(first_replica) = replicas.first() else {
            return Err(GatewayError::NoMember { role: "retriever" });
        };
        let hedge_delay = match replicas.get(1) {
            Some(_) if self.config.hedging => self.selector.hedge_delay(shard),
            _ => None,
        };
        let mut hedges = 0;
        let mut tried = 1;
        // A first try has no span of its own: the replica's server span, a child of the
        // request's, says all there is. Hedges and retries get one, to be told apart.
        let first = self.attempt(shard, first_replica, timeout, &call);
        let outcome = match hedge_delay {
            None => first.await,
            Some(delay) => {
                tokio::pin!(first);
                tokio::select! {
                    outcome = &mut first => outcome,
                    _ = tokio::time::sleep(delay) => {
                        hedges += 1;
                        metrics().hedges.inc();
                        tried = 2;
                        let second = self
                            .attempt(shard, &replicas[1], timeout, &call)
                            .instrument(attempt_span(shard, &replicas[1], true, false));
                        tokio::pin!(second);
                        first_success(first, second).await
                    }
                }
            }
        };
        let error = match outcome {
            Ok(value) => return Ok(ShardAnswer { value, hedges }),
            Err(error) if !is_retryable(error.code()) => return Err(error),
            Err(error) => error,
        };
        let Some(retry_replica) = replicas.get(tried) else {
            return Err(error);
        };
        warn!(shard, error = %error, replica = retry_replica.replica, "retrying on another replica");
        metrics().retries.inc();
        let retry_span = attempt_span(shard, retry_replica, false, true);
        retry_span.record("after_error", code_name(error.code()));
        let value = self
            .attempt(shard, retry_replica, timeout, &call)
            .instrument(retry_span)
            .await?;
        Ok(ShardAnswer { value, hedges })
    }

    /// One call to one replica, counted as outstanding while it runs.
    async fn attempt<T, F, Fut>(
        &self,
        shard: u32,
        replica: &Member,
        timeout: Duration,
        call: &F,
    ) -> Result<T, GatewayError>
    where
        F: Fn(RetrieverClient<TracedChannel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let client = self.clients.retriever(replica)?;
        let _in_flight = self.selector.begin(&replica.address);
        let started = Instant::now();
        let outcome = match tokio::time::timeout(timeout, call(client)).await {
            Ok(Ok(response)) => {
                self.selector
                    .record(shard, &replica.address, started.elapsed());
                Ok(response.into_inner())
            }
            Ok(Err(status)) => Err(GatewayError::downstream("retriever", status)),
            Err(_) => Err(GatewayError::downstream(
                "retriever",
                Status::deadline_exceeded(format!(
                    "shard {shard} replica {} timed out",
                    replica.replica
                )),
            )),
        };
        metrics()
            .shard_call_duration
            .with_label_values(&[&shard.to_string()])
            .observe(started.elapsed().as_secs_f64());
        // Only a hedge's or retry's own span is marked failed: a first try runs in the
        // request's span, which may still succeed on another replica.
        let span = Span::current();
        let own_span = span.metadata().map(|metadata| metadata.name()) == Some(ATTEMPT_SPAN);
        if let (Err(error), true) = (&outcome, own_span) {
            span.record("otel.status_code", "ERROR");
            span.record("error.code", code_name(error.code()));
        }
        outcome
    }
}

/// The name of a hedged or retried call's span.
const ATTEMPT_SPAN: &str = "retriever.call";

/// The client span of a hedged or retried call to one replica.
fn attempt_span(shard: u32, replica: &Member, hedged: bool, retry: bool) -> Span {
    tracing::info_span!(
        ATTEMPT_SPAN,
        otel.kind = "client",
        otel.status_code = Empty,
        shard,
        replica = replica.replica,
        hedged,
        retry,
        after_error = Empty,
        error.code = Empty,
    )
}

/// A shard's answer and how many hedged calls it took.
pub struct ShardAnswer<T> {
    pub value: T,
    pub hedges: u32,
}

/// The first of two calls to succeed; the other's failure only if both fail.
async fn first_success<T>(
    mut first: std::pin::Pin<&mut impl Future<Output = Result<T, GatewayError>>>,
    mut second: std::pin::Pin<&mut impl Future<Output = Result<T, GatewayError>>>,
) -> Result<T, GatewayError> {
    tokio::select! {
        outcome = &mut first => match outcome {
            Ok(value) => Ok(value),
            Err(_) => second.await,
        },
        outcome = &mut second => match outcome {
            Ok(value) => Ok(value),
            Err(_) => first.await,
        },
    }
}

/// Failures another replica might not have.
fn is_retryable(code: tonic::Code) -> bool {
    !matches!(
        code,
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
