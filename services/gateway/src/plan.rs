//! Query planning: the retrieval strategy follows the question's type (DESIGN.md step 2).
//! Until shards hold vectors, every plan runs as BM25 keyword search and its strategy name
//! says so.

use quarry_proto::v1::{QueryType, SearchMode};

use crate::error::GatewayError;

/// What retrieval to run and how to describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalPlan {
    /// BM25 candidates to ask every shard for.
    pub keyword_k: u32,
    /// Shown to the user in `strategy`.
    pub strategy: String,
}

const KEYWORD_ONLY: &str = "bm25 with cluster-wide statistics";

/// The plan of a `Search` in `mode` for `k` hits.
pub fn plan_search(mode: SearchMode, k: u32) -> Result<RetrievalPlan, GatewayError> {
    let strategy = match mode {
        SearchMode::Keyword => format!("keyword: {KEYWORD_ONLY}"),
        SearchMode::Hybrid | SearchMode::Unspecified => {
            format!("hybrid requested, running keyword only (no vector index yet): {KEYWORD_ONLY}")
        }
        SearchMode::Semantic => return Err(semantic_unavailable()),
    };
    Ok(RetrievalPlan {
        keyword_k: k,
        strategy,
    })
}

/// The plan of an `Ask` for a question of `query_type`, answering from `k` passages.
pub fn plan_question(
    query_type: QueryType,
    mode: SearchMode,
    k: u32,
) -> Result<RetrievalPlan, GatewayError> {
    if mode == SearchMode::Semantic {
        return Err(semantic_unavailable());
    }
    let planned = match query_type {
        QueryType::Factual => "factual: semantic-weighted 0.7/0.3",
        QueryType::Analytical => "analytical: balanced 0.5/0.5 with entity sub-queries",
        QueryType::Procedural => "procedural: balanced 0.5/0.5",
        QueryType::Creative => "creative: balanced 0.5/0.5",
        QueryType::Unspecified => "balanced 0.5/0.5",
    };
    Ok(RetrievalPlan {
        keyword_k: k,
        strategy: format!(
            "{planned} planned; running keyword only (no vector index yet): {KEYWORD_ONLY}"
        ),
    })
}

fn semantic_unavailable() -> GatewayError {
    GatewayError::FailedPrecondition(
        "mode: SEMANTIC needs a vector index, which this cluster's shards do not have yet; use KEYWORD or HYBRID".to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_says_it_runs_keyword_only() {
        let plan = plan_search(SearchMode::Hybrid, 10).unwrap();
        assert!(plan.strategy.contains("keyword only"), "{}", plan.strategy);
        assert_eq!(plan.keyword_k, 10);
    }

    #[test]
    fn the_plan_names_the_question_type() {
        let plan = plan_question(QueryType::Factual, SearchMode::Hybrid, 5).unwrap();
        assert!(plan
            .strategy
            .starts_with("factual: semantic-weighted 0.7/0.3"));
        let error = plan_question(QueryType::Factual, SearchMode::Semantic, 5).unwrap_err();
        assert!(error.to_string().starts_with("mode:"));
    }
}
