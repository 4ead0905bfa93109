//! `Search`: validate, plan, fan out to every shard, merge, and return the top k hits with
//! how many shards answered.

use quarry_proto::v1::{Hit, SearchRequest, SearchResponse};

use crate::deadline::Deadline;
use crate::error::GatewayError;
use crate::fan_out::FanOutResult;
use crate::gateway::Gateway;
use crate::plan::plan_search;
use crate::validate::{resolve_k, resolve_mode, validate_query};

impl Gateway {
    pub async fn search(
        &self,
        request: SearchRequest,
        deadline: Deadline,
    ) -> Result<SearchResponse, GatewayError> {
        validate_query("query", &request.query, &self.config)?;
        let k = resolve_k(request.k, self.config.default_search_k, &self.config)?;
        let mode = resolve_mode(request.mode)?;
        let plan = plan_search(mode, k)?;
        let fan_out = self
            .fan_out_keyword(
                &request.query,
                plan.keyword_k,
                deadline.hop(self.shard_timeout()),
            )
            .await;
        require_some_shard(&fan_out)?;
        let hits = fan_out
            .keyword
            .iter()
            .take(k as usize)
            .map(|sharded| Hit {
                doc_id: sharded.candidate.doc_id.clone(),
                score: sharded.candidate.score,
                title: sharded.candidate.title.clone(),
                text: sharded.candidate.text.clone(),
                shard: sharded.shard,
            })
            .collect();
        Ok(SearchResponse {
            hits,
            shards_total: fan_out.shards_total,
            shards_answered: fan_out.shards_answered(),
            partial: fan_out.partial(),
            strategy: plan.strategy,
            shards_failed: fan_out.shards_failed,
        })
    }

    pub(crate) fn shard_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.config.shard_timeout_ms)
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
