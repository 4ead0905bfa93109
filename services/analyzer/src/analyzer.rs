//! `QuestionAnalyzer`: the plain Rust API that turns a question into an `Analysis` with the
//! rules of `rules`.

use quarry_proto::v1::{Analysis, Entity as ProtoEntity, QueryType as ProtoQueryType};

use crate::error::AnalyzerError;
use crate::rules::{classify, complexity, extract_entities, QueryType};

/// Longest question analysed, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

/// Rule-based question analysis.
#[derive(Debug, Clone, Default)]
pub struct QuestionAnalyzer;

impl QuestionAnalyzer {
    pub fn analyze(&self, query: &str) -> Result<Analysis, AnalyzerError> {
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
        let classification = classify(query);
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
            analyzer: "rules".to_string(),
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
        let analysis = QuestionAnalyzer
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
        let error = QuestionAnalyzer.analyze("  \n").unwrap_err();
        assert_eq!(error.to_string(), "query: must not be empty");
    }
}
