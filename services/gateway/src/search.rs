//! `Search`: validate, plan, embed the query when the plan wants vectors, fan out to every
//! shard, fuse, and return the top k hits with how many shards answered.

use quarry_proto::v1::{Hit, SearchMode, SearchRequest, SearchResponse};

use crate::deadline::Deadline;
use crate::error::GatewayError;
use crate::fan_out::FanOutResult;
use crate::front::CollectionGrant;
use crate::gateway::Gateway;
use crate::plan::{plan_search, PlanContext};
use crate::validate::{resolve_fusion, resolve_k, resolve_mode, validate_query};

impl Gateway {
    /// Records k, hits and partial on the current (server) span.
    pub async fn search(
        &self,
        request: SearchRequest,
        grant: Option<&CollectionGrant>,
        deadline: Deadline,
    ) -> Result<SearchResponse, GatewayError> {
        let target = self.target_of(&request.collection, request.filter.clone(), grant)?;
        validate_query("query", &request.query, &self.config)?;
        let k = resolve_k(request.k, self.config.default_search_k, &self.config)?;
        let mode = resolve_mode(request.mode)?;
        let query_vector = if mode == SearchMode::Keyword {
            None
        } else {
            self.embed_query(&request.query, deadline).await?
        };
        let fusion = resolve_fusion(request.fusion, self.config.fusion)?;
        let mut context = self.plan_context(mode, k, query_vector.is_some());
        context.fusion = fusion;
        let plan = self.plan_rerank(plan_search(context)?, k, false);
        let retrieved = self
            .retrieve(
                &target,
                &request.query,
                &plan,
                query_vector.unwrap_or_default(),
                k,
                deadline,
            )
            .await?;
        let hits = retrieved
            .ranked
            .iter()
            .map(|sharded| Hit {
                doc_id: sharded.candidate.doc_id.clone(),
                score: sharded.candidate.score,
                title: sharded.candidate.title.clone(),
                text: sharded.candidate.text.clone(),
                shard: sharded.shard,
                metadata_json: sharded.candidate.metadata_json.clone(),
            })
            .collect::<Vec<Hit>>();
        let span = tracing::Span::current();
        span.record("k", k);
        span.record("hits", hits.len());
        span.record("partial", retrieved.partial());
        Ok(SearchResponse {
            hits,
            shards_total: retrieved.shards_total,
            shards_answered: retrieved.shards_answered(),
            partial: retrieved.partial(),
            strategy: plan.strategy,
            shards_failed: retrieved.shards_failed,
            hedges: retrieved.hedges,
        })
    }

    pub(crate) fn plan_context(&self, mode: SearchMode, k: u32, vectors: bool) -> PlanContext {
        PlanContext {
            mode,
            k,
            vectors,
            fusion: self.config.fusion,
            rrf_k: self.config.rrf_k,
        }
    }
}

/// Some shards failing makes a partial answer; all of them failing is an error.
pub(crate) fn require_some_shard(fan_out: &FanOutResult) -> Result<(), GatewayError> {
    if fan_out.shards_total > 0 && fan_out.shards_answered() == 0 {
        return Err(GatewayError::Unavailable(format!(
            "no shard answered ({} of {} failed)",
            fan_out.shards_failed.len(),
            fan_out.shards_total
        )));
    }
    Ok(())
}
