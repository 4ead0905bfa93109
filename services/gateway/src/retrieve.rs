//! Retrieval as a plan says: embed the query when vectors are wanted, fan the main query
//! (and any entity sub-queries) out to every shard, cut each global list to its k, and fuse.

use futures::future::join_all;
use quarry_proto::v1::EmbedRequest;
use tonic::{Code, Request};

use crate::deadline::Deadline;
use crate::error::GatewayError;
use crate::fan_out::{FanOutRequest, ShardedCandidate};
use crate::fusion::{fuse, WeightedList};
use crate::gateway::Gateway;
use crate::metrics::metrics;
use crate::plan::RetrievalPlan;
use crate::search::require_some_shard;

/// Ranked candidates and how the shards answered.
#[derive(Debug, Default)]
pub struct Retrieved {
    pub ranked: Vec<ShardedCandidate>,
    pub shards_total: u32,
    pub shards_failed: Vec<u32>,
    /// Hedged shard calls.
    pub hedges: u32,
}

impl Retrieved {
    pub fn shards_answered(&self) -> u32 {
        self.shards_total - self.shards_failed.len() as u32
    }

    pub fn partial(&self) -> bool {
        !self.shards_failed.is_empty()
    }
}

impl Gateway {
    /// The query's embedding, or `None` when the analyzer has no encoder.
    pub(crate) async fn embed_query(
        &self,
        text: &str,
        deadline: Deadline,
    ) -> Result<Option<Vec<f32>>, GatewayError> {
        let limit = deadline.hop(self.hop_limit());
        let vectors = self.embed_texts(vec![text.to_string()], limit).await?;
        Ok(vectors.and_then(|vectors| vectors.into_iter().next()))
    }

    /// Embeddings of `texts`, in order, within `timeout`, or `None` when the analyzer has no encoder.
    pub(crate) async fn embed_texts(
        &self,
        texts: Vec<String>,
        timeout: std::time::Duration,
    ) -> Result<Option<Vec<Vec<f32>>>, GatewayError> {
        let count = texts.len();
        let mut analyzer = self.clients.analyzer()?;
        let mut request = Request::new(EmbedRequest { texts });
        request.set_timeout(timeout);
        match analyzer.embed(request).await {
            Ok(response) => {
                let vectors: Vec<Vec<f32>> = response
                    .into_inner()
                    .vectors
                    .into_iter()
                    .map(|vector| vector.values)
                    .collect();
                if vectors.len() != count {
                    return Err(GatewayError::Internal(format!(
                        "analyzer returned {} vectors for {count} texts",
                        vectors.len()
                    )));
                }
                Ok(Some(vectors))
            }
            Err(status) if status.code() == Code::FailedPrecondition => Ok(None),
            Err(status) => Err(GatewayError::downstream("analyzer", status)),
        }
    }

    /// Runs the plan for `query`; `query_vector` is empty when the plan wants no vectors.
    /// Records the strategy and whether the answer is partial on the current (server) span.
    pub(crate) async fn retrieve(
        &self,
        query: &str,
        plan: &RetrievalPlan,
        query_vector: Vec<f32>,
        deadline: Deadline,
    ) -> Result<Retrieved, GatewayError> {
        tracing::Span::current().record("strategy", plan.strategy.as_str());
        let timeout = deadline.hop(self.shard_timeout());
        let main_request = FanOutRequest {
            query: query.to_string(),
            keyword_k: plan.keyword_k,
            vector_k: plan.vector_k,
            query_vector,
        };
        let sub_requests: Vec<FanOutRequest> = plan
            .sub_queries
            .iter()
            .map(|sub_query| FanOutRequest {
                query: sub_query.clone(),
                keyword_k: plan.keyword_k.max(1),
                ..FanOutRequest::default()
            })
            .collect();
        let (main, subs) = futures::join!(
            self.fan_out(&main_request, timeout),
            join_all(
                sub_requests
                    .iter()
                    .map(|request| self.fan_out(request, timeout))
            )
        );
        require_some_shard(&main)?;
        let mut shards_failed = main.shards_failed.clone();
        let keyword = top(&main.keyword, plan.keyword_k);
        let vector = top(&main.vector, plan.vector_k);
        let sub_keywords: Vec<&[ShardedCandidate]> = subs
            .iter()
            .map(|sub| top(&sub.keyword, plan.keyword_k.max(1)))
            .collect();
        for sub in &subs {
            shards_failed.extend(&sub.shards_failed);
        }
        shards_failed.sort_unstable();
        shards_failed.dedup();
        let partial = !shards_failed.is_empty();
        tracing::Span::current().record("partial", partial);
        if partial {
            metrics().partial_results.inc();
        }
        let ranked = if plan.vector_k == 0 && sub_keywords.is_empty() {
            keyword.to_vec()
        } else if plan.keyword_k == 0 && sub_keywords.is_empty() {
            vector.to_vec()
        } else {
            let mut lists = vec![
                WeightedList {
                    weight: plan.keyword_weight,
                    candidates: keyword,
                },
                WeightedList {
                    weight: plan.vector_weight,
                    candidates: vector,
                },
            ];
            for candidates in sub_keywords {
                lists.push(WeightedList {
                    weight: plan.sub_query_weight,
                    candidates,
                });
            }
            fuse(&lists, plan.fusion, self.config.rrf_k)
        };
        let hedges = main.hedges + subs.iter().map(|sub| sub.hedges).sum::<u32>();
        let span = tracing::Span::current();
        let fan_outs = std::iter::once(&main).chain(&subs);
        span.record(
            "shards_asked",
            fan_outs
                .clone()
                .map(|fan_out| fan_out.shards_total)
                .sum::<u32>(),
        );
        span.record(
            "shards_answered",
            fan_outs
                .map(|fan_out| fan_out.shards_answered())
                .sum::<u32>(),
        );
        span.record("hedges", hedges);
        Ok(Retrieved {
            ranked,
            shards_total: main.shards_total,
            shards_failed,
            hedges,
        })
    }
}

/// The first `k` of a global list (every shard's best, merged), so that the fused result
/// does not depend on how many shards contributed.
fn top(candidates: &[ShardedCandidate], k: u32) -> &[ShardedCandidate] {
    &candidates[..candidates.len().min(k as usize)]
}
