//! Query planning (DESIGN.md step 2): which candidate lists to gather and how to fuse them.
//! A `Search` is balanced; an `Ask` follows the question's type — factual questions lean
//! on vectors (0.7/0.3, 1.5k dense and 0.5k keyword candidates), analytical ones add
//! keyword sub-queries for their entities, the rest are balanced. Without an encoder every
//! plan runs keyword-only, and its strategy says so.

use quarry_proto::v1::{QueryType, SearchMode};

use crate::error::GatewayError;
use crate::fusion::Fusion;

/// Most entity sub-queries an analytical question adds.
const MAX_SUB_QUERIES: usize = 3;
/// Weight shared by all entity sub-query lists.
const SUB_QUERY_TOTAL_WEIGHT: f64 = 0.25;

/// What retrieval to run and how to describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalPlan {
    /// BM25 candidates to ask every shard for; 0 for none.
    pub keyword_k: u32,
    /// Vector candidates to ask every shard for; 0 for none.
    pub vector_k: u32,
    pub keyword_weight: f64,
    pub vector_weight: f64,
    /// Extra keyword-only queries (an analytical question's entities).
    pub sub_queries: Vec<String>,
    pub sub_query_weight: f64,
    pub fusion: Fusion,
    /// Shown to the user in `strategy`.
    pub strategy: String,
    /// Rerank this many fused candidates before keeping k (`rerank::with_rerank`).
    pub rerank_candidates: Option<u32>,
}

/// What every plan needs to know.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext {
    pub mode: SearchMode,
    pub k: u32,
    /// Whether the query could be embedded (an encoder is configured).
    pub vectors: bool,
    pub fusion: Fusion,
    pub rrf_k: f64,
}

const BM25: &str = "bm25 with cluster-wide statistics";

impl PlanContext {
    fn keyword_only(&self, reason: &str) -> RetrievalPlan {
        RetrievalPlan {
            keyword_k: self.k,
            vector_k: 0,
            keyword_weight: 1.0,
            vector_weight: 0.0,
            sub_queries: Vec::new(),
            sub_query_weight: 0.0,
            fusion: self.fusion,
            strategy: format!("{reason}{BM25}"),
            rerank_candidates: None,
        }
    }

    fn semantic_only(&self) -> Result<RetrievalPlan, GatewayError> {
        if !self.vectors {
            return Err(no_encoder());
        }
        Ok(RetrievalPlan {
            keyword_k: 0,
            vector_k: self.k,
            keyword_weight: 0.0,
            vector_weight: 1.0,
            sub_queries: Vec::new(),
            sub_query_weight: 0.0,
            fusion: self.fusion,
            strategy: "semantic: vector cosine similarity".to_string(),
            rerank_candidates: None,
        })
    }

    fn hybrid(
        &self,
        label: &str,
        vector_weight: f64,
        vector_k: u32,
        keyword_k: u32,
    ) -> RetrievalPlan {
        let keyword_weight = 1.0 - vector_weight;
        let fusion = match self.fusion {
            Fusion::Rrf => format!("rrf(k={})", self.rrf_k),
            Fusion::Weighted => "normalised weighted sum".to_string(),
        };
        RetrievalPlan {
            keyword_k,
            vector_k,
            keyword_weight,
            vector_weight,
            sub_queries: Vec::new(),
            sub_query_weight: 0.0,
            fusion: self.fusion,
            strategy: format!(
                "{label}: {fusion} of vector top-{vector_k} ({vector_weight:.1}) and {BM25} top-{keyword_k} ({keyword_weight:.1})"
            ),
            rerank_candidates: None,
        }
    }
}

/// The plan of a `Search`.
pub fn plan_search(context: PlanContext) -> Result<RetrievalPlan, GatewayError> {
    match context.mode {
        SearchMode::Keyword => Ok(context.keyword_only("keyword: ")),
        SearchMode::Semantic => context.semantic_only(),
        SearchMode::Hybrid | SearchMode::Unspecified if !context.vectors => Ok(context
            .keyword_only("hybrid requested, running keyword only (no encoder configured): ")),
        SearchMode::Hybrid | SearchMode::Unspecified => {
            Ok(context.hybrid("hybrid", 0.5, context.k, context.k))
        }
    }
}

/// The plan of an `Ask` for a question of `query_type` with these entities.
pub fn plan_question(
    context: PlanContext,
    query_type: QueryType,
    entities: &[String],
) -> Result<RetrievalPlan, GatewayError> {
    let label = match query_type {
        QueryType::Factual => "factual: semantic-weighted",
        QueryType::Analytical => "analytical: balanced with entity sub-queries",
        QueryType::Procedural => "procedural: balanced",
        QueryType::Creative => "creative: balanced",
        QueryType::Unspecified => "balanced",
    };
    match context.mode {
        SearchMode::Keyword => {
            return Ok(context.keyword_only(&format!("{label} planned; keyword mode: ")))
        }
        SearchMode::Semantic => return context.semantic_only(),
        SearchMode::Hybrid | SearchMode::Unspecified => {}
    }
    if !context.vectors {
        return Ok(context.keyword_only(&format!(
            "{label} planned; running keyword only (no encoder configured): "
        )));
    }
    let k = context.k;
    let mut plan = match query_type {
        QueryType::Factual => {
            let vector_k = (k * 3).div_ceil(2);
            let keyword_k = k.div_ceil(2).max(1);
            context.hybrid(label, 0.7, vector_k, keyword_k)
        }
        _ => context.hybrid(label, 0.5, k, k),
    };
    if query_type == QueryType::Analytical {
        let mut sub_queries: Vec<String> = Vec::new();
        for entity in entities {
            let entity = entity.trim();
            if entity.chars().count() >= 2
                && !sub_queries
                    .iter()
                    .any(|known| known.eq_ignore_ascii_case(entity))
            {
                sub_queries.push(entity.to_string());
            }
            if sub_queries.len() == MAX_SUB_QUERIES {
                break;
            }
        }
        if !sub_queries.is_empty() {
            plan.sub_query_weight = SUB_QUERY_TOTAL_WEIGHT / sub_queries.len() as f64;
            plan.strategy
                .push_str(&format!(", plus keyword sub-queries {sub_queries:?}"));
            plan.sub_queries = sub_queries;
        }
    }
    Ok(plan)
}

fn no_encoder() -> GatewayError {
    GatewayError::FailedPrecondition(
        "mode: SEMANTIC needs an encoder, and the analyzer has none configured (analyzer.encoder); use KEYWORD or HYBRID".to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(mode: SearchMode, vectors: bool) -> PlanContext {
        PlanContext {
            mode,
            k: 10,
            vectors,
            fusion: Fusion::Rrf,
            rrf_k: 60.0,
        }
    }

    #[test]
    fn search_plans_follow_the_mode() {
        let keyword = plan_search(context(SearchMode::Keyword, true)).unwrap();
        assert_eq!((keyword.keyword_k, keyword.vector_k), (10, 0));
        let hybrid = plan_search(context(SearchMode::Hybrid, true)).unwrap();
        assert_eq!((hybrid.keyword_k, hybrid.vector_k), (10, 10));
        assert_eq!(hybrid.vector_weight, 0.5);
        assert!(
            hybrid.strategy.starts_with("hybrid: rrf(k=60)"),
            "{}",
            hybrid.strategy
        );
        let degraded = plan_search(context(SearchMode::Hybrid, false)).unwrap();
        assert_eq!(degraded.vector_k, 0);
        assert!(degraded.strategy.contains("keyword only"));
        let error = plan_search(context(SearchMode::Semantic, false)).unwrap_err();
        assert!(error.to_string().starts_with("mode:"));
    }

    #[test]
    fn question_plans_follow_the_type() {
        let factual =
            plan_question(context(SearchMode::Hybrid, true), QueryType::Factual, &[]).unwrap();
        assert_eq!((factual.vector_k, factual.keyword_k), (15, 5));
        assert_eq!(factual.vector_weight, 0.7);
        assert!(factual.strategy.starts_with("factual: semantic-weighted"));
        let entities = vec![
            "NASA".to_string(),
            "nasa".to_string(),
            "zero trust".to_string(),
            "x".to_string(),
        ];
        let analytical = plan_question(
            context(SearchMode::Hybrid, true),
            QueryType::Analytical,
            &entities,
        )
        .unwrap();
        assert_eq!(analytical.sub_queries, ["NASA", "zero trust"]);
        assert!((analytical.sub_query_weight - 0.125).abs() < 1e-12);
        let procedural = plan_question(
            context(SearchMode::Hybrid, true),
            QueryType::Procedural,
            &entities,
        )
        .unwrap();
        assert!(procedural.sub_queries.is_empty());
        assert_eq!(procedural.vector_weight, 0.5);
        let keyword_only =
            plan_question(context(SearchMode::Hybrid, false), QueryType::Factual, &[]).unwrap();
        assert!(keyword_only
            .strategy
            .starts_with("factual: semantic-weighted planned; running keyword only"));
    }
}
