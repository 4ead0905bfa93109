//! `QuestionAnalyzer`: the plain Rust API that turns a question into an `Analysis` with the
//! rules of `rules`, and, given the question's embedding, the trained `QueryTypeHead` where
//! the rules are not sure.

use quarry_proto::v1::{Analysis, Entity as ProtoEntity, QueryType as ProtoQueryType};

use crate::error::AnalyzerError;
use crate::query_head::{combine, QueryTypeHead};
use crate::rules::{classify, complexity, extract_entities, QueryType};

/// Longest question analysed, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

/// Rule-based question analysis, with a trained head over the question's embedding.
#[derive(Debug, Clone, Default)]
pub struct QuestionAnalyzer {
    head: Option<QueryTypeHead>,
}

impl QuestionAnalyzer {
    /// Rules only.
    pub fn rules() -> Self {
        Self::default()
    }

    /// Rules, and `head` where they are not sure (given the question's embedding).
    pub fn with_head(head: Option<QueryTypeHead>) -> Self {
        Self { head }
    }

    /// Whether a question's embedding would be used.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Checks what `analyze` would refuse, before anything is embedded.
    pub fn validate(&self, query: &str) -> Result<(), AnalyzerError> {
        if query.trim().is_empty() {
            return Err(AnalyzerError::InvalidArgument {
                field: "query",
                reason: "must not be empty".to_string(),
            });
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(AnalyzerError::InvalidArgument {
                field: "query",
                reason: format!("must be at most {MAX_QUERY_BYTES} bytes"),
            });
        }
        Ok(())
    }

    /// The rules' analysis of `query`.
    pub fn analyze(&self, query: &str) -> Result<Analysis, AnalyzerError> {
        self.analyze_with_embedding(query, None)
    }

    /// The analysis of `query`; with its `embedding` (from the encoder the head was trained
    /// on), the head decides the type where the rules are not sure.
    pub fn analyze_with_embedding(
        &self,
        query: &str,
        embedding: Option<&[f32]>,
    ) -> Result<Analysis, AnalyzerError> {
        self.validate(query)?;
        let head_probabilities = match (&self.head, embedding) {
            (Some(head), Some(embedding)) => head.probabilities(embedding),
            _ => None,
        };
        let analyzer_name = if head_probabilities.is_some() {
            "rules+embedding"
        } else {
            "rules"
        };
        let classification = combine(classify(query), head_probabilities);
        let entities = extract_entities(query);
        let complexity = complexity(query, &entities);
        Ok(Analysis {
            query_type: proto_query_type(classification.query_type) as i32,
            intent: classification.intent,
            entities: entities
                .into_iter()
                .map(|entity| ProtoEntity {
                    text: entity.text,
                    kind: entity.kind.as_str().to_string(),
                })
                .collect(),
            complexity,
            confidence: classification.confidence,
            analyzer: analyzer_name.to_string(),
        })
    }
}

fn proto_query_type(query_type: QueryType) -> ProtoQueryType {
    match query_type {
        QueryType::Factual => ProtoQueryType::Factual,
        QueryType::Procedural => ProtoQueryType::Procedural,
        QueryType::Analytical => ProtoQueryType::Analytical,
        QueryType::Creative => ProtoQueryType::Creative,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_carries_type_entities_and_bounded_scores() {
        let analysis = QuestionAnalyzer::rules()
            .analyze("Compare \"zero trust\" and VPNs at NASA since 2019")
            .unwrap();
        assert_eq!(analysis.query_type, ProtoQueryType::Analytical as i32);
        assert!(analysis
            .entities
            .iter()
            .any(|e| e.text == "zero trust" && e.kind == "quoted"));
        assert!(analysis
            .entities
            .iter()
            .any(|e| e.text == "NASA" && e.kind == "acronym"));
        assert!((0.0..=1.0).contains(&analysis.complexity));
        assert!((0.0..=1.0).contains(&analysis.confidence));
        assert_eq!(analysis.analyzer, "rules");
    }

    #[test]
    fn blank_queries_are_invalid_naming_the_field() {
        let error = QuestionAnalyzer::rules().analyze("  \n").unwrap_err();
        assert_eq!(error.to_string(), "query: must not be empty");
    }
}
