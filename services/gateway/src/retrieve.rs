//! Retrieval as a plan says: embed the query when vectors are wanted, search every shard for
//! the main query and any entity sub-queries in one request each, cut each global list to
//! its k, fuse, cut to the final k, and fetch those hits' stored fields.

use quarry_proto::v1::EmbedRequest;
use tonic::{Code, Request};

use crate::deadline::{Budget, Deadline};
use crate::error::GatewayError;
use crate::fan_out::{fetch_stored, search_shards, FanOutRequest, ShardedCandidate};
use crate::fusion::{fuse, WeightedList};
use crate::gateway::Gateway;
use crate::metrics::metrics;
use crate::plan::RetrievalPlan;
use crate::search::require_some_shard;

/// Tries of one retrieval with a newer placement after a shard moved past the last.
const MAX_PLACEMENT_TRIES: u32 = 4;

/// Where a retrieval looks: a collection, and only the documents a filter admits.
#[derive(Debug, Clone, Default)]
pub struct SearchTarget {
    pub collection: String,
    pub filter: Option<quarry_proto::v1::Filter>,
}

impl Gateway {
    /// The collection and filter of a search or a question, checked.
    pub(crate) fn target_of(
        &self,
        collection: &str,
        filter: Option<quarry_proto::v1::Filter>,
        grant: Option<&crate::front::CollectionGrant>,
    ) -> Result<SearchTarget, GatewayError> {
        let collection = self.collection_of(collection, grant)?;
        if let Some(filter) = &filter {
            quarry_kit::filter::validate(filter)
                .map_err(|error| GatewayError::Refused(error.message))?;
            if let Some(record) = self.catalog.snapshot().get(&collection) {
                quarry_kit::filter::check_kinds(filter, &record.fields, &collection)
                    .map_err(|error| GatewayError::Refused(error.message))?;
            }
        }
        Ok(SearchTarget { collection, filter })
    }
}

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
        let vectors = self
            .embed_texts(vec![text.to_string()], false, limit)
            .await?;
        Ok(vectors.and_then(|vectors| vectors.into_iter().next()))
    }

    /// Embeddings of `texts`, in order, within `timeout`, or `None` when the analyzer has no
    /// encoder; `documents` when they are documents being ingested (never cached).
    pub(crate) async fn embed_texts(
        &self,
        texts: Vec<String>,
        documents: bool,
        timeout: std::time::Duration,
    ) -> Result<Option<Vec<Vec<f32>>>, GatewayError> {
        let count = texts.len();
        let mut analyzer = self.clients.analyzer()?;
        let mut request = Request::new(EmbedRequest { texts, documents });
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

    /// The fused candidates of one search, cut to what is fetched.
    fn fuse_searched(
        &self,
        searched: &crate::fan_out::FanOutResult,
        plan: &RetrievalPlan,
        k: u32,
        sub_query_k: u32,
    ) -> Vec<ShardedCandidate> {
        let keyword = top(&searched.keyword, plan.keyword_k);
        let vector = top(&searched.vector, plan.vector_k);
        let sub_keywords: Vec<&[ShardedCandidate]> = searched
            .sub_queries
            .iter()
            .map(|list| top(list, sub_query_k))
            .collect();
        let mut ranked = if plan.vector_k == 0 && sub_keywords.is_empty() {
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
        ranked.truncate(plan.rerank_candidates.unwrap_or(k).max(k) as usize);
        ranked
    }

    /// Runs the plan for `query` and returns its best `k` with their stored fields;
    /// `query_vector` is empty when the plan wants no vectors. Records the strategy and
    /// whether the answer is partial on the current (server) span.
    pub(crate) async fn retrieve(
        &self,
        target: &SearchTarget,
        query: &str,
        plan: &RetrievalPlan,
        query_vector: Vec<f32>,
        k: u32,
        deadline: Deadline,
    ) -> Result<Retrieved, GatewayError> {
        tracing::Span::current().record("strategy", plan.strategy.as_str());
        let budget = Budget::new(deadline.hop(self.shard_timeout()));
        let sub_query_k = plan.keyword_k.max(1);
        let request = FanOutRequest {
            collection: target.collection.clone(),
            filter: target.filter.clone(),
            query: query.to_string(),
            keyword_k: plan.keyword_k,
            vector_k: plan.vector_k,
            query_vector,
            sub_queries: plan.sub_queries.clone(),
            sub_query_k: if plan.sub_queries.is_empty() {
                0
            } else {
                sub_query_k
            },
        };
        // One placement snapshot per try; a shard that moved past it sends the query round
        // again with a newer one, while the deadline allows.
        let mut placement = self.placement_snapshot();
        let mut tries = 0;
        let (searched, mut fetched) = loop {
            tries += 1;
            let searched =
                search_shards(&self.shards, &self.statistics, &request, &placement, budget).await;
            if let Some(epoch) = searched.moved.filter(|_| tries < MAX_PLACEMENT_TRIES) {
                placement = self.refresh_placement(epoch).await;
                continue;
            }
            require_some_shard(&searched)?;
            let ranked = self.fuse_searched(&searched, plan, k, sub_query_k);
            let fetched = fetch_stored(
                &self.shards,
                &target.collection,
                ranked,
                placement.epoch,
                budget,
            )
            .await;
            if let Some(epoch) = fetched.moved.filter(|_| tries < MAX_PLACEMENT_TRIES) {
                placement = self.refresh_placement(epoch).await;
                continue;
            }
            break (searched, fetched);
        };
        if let (Some(reranker), Some(_)) = (&self.reranker, plan.rerank_candidates) {
            let reranked = reranker.rerank(query, &mut fetched.hits).await;
            tracing::Span::current().record("reranked", reranked);
        }
        fetched.hits.truncate(k as usize);
        let mut shards_failed = searched.shards_failed.clone();
        shards_failed.extend(&fetched.shards_failed);
        shards_failed.sort_unstable();
        shards_failed.dedup();
        let partial = !shards_failed.is_empty();
        let hedges = searched.hedges + fetched.hedges;
        let span = tracing::Span::current();
        span.record("partial", partial);
        span.record("shards_asked", searched.shards_total);
        span.record("shards_answered", searched.shards_answered());
        span.record("hedges", hedges);
        if let Some(source) = searched.statistics.metric_label() {
            span.record("statistics", source);
        }
        if partial {
            metrics().partial_results.inc();
        }
        Ok(Retrieved {
            ranked: fetched.hits,
            shards_total: searched.shards_total,
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
