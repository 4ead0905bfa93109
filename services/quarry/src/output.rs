//! How client commands print responses: readable text, or JSON (`--json`) with the field
//! names of the protobuf messages.

use std::fmt::Write;

use quarry_proto::v1::{
    Analysis, AskResponse, ClusterStatusResponse, CollectionInfo, Evaluation, IngestSummary,
    QueryType, RetrievalInfo, SearchResponse,
};
use serde_json::{json, Value};

/// At most `max` characters of `text`, with "…" when cut.
fn snippet(text: &str, max: usize) -> String {
    let mut cut: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        cut.push('…');
    }
    cut
}

fn query_type_name(raw: i32) -> &'static str {
    match QueryType::try_from(raw).unwrap_or(QueryType::Unspecified) {
        QueryType::Factual => "factual",
        QueryType::Procedural => "procedural",
        QueryType::Analytical => "analytical",
        QueryType::Creative => "creative",
        QueryType::Unspecified => "unspecified",
    }
}

pub fn search_text(response: &SearchResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} hit(s); shards {}/{}{}; {}",
        response.hits.len(),
        response.shards_answered,
        response.shards_total,
        if response.partial { " (PARTIAL)" } else { "" },
        response.strategy
    );
    for (rank, hit) in response.hits.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>3}. [{}] {:.4}  {}",
            rank + 1,
            hit.doc_id,
            hit.score,
            hit.title
        );
        let _ = writeln!(out, "     {}", snippet(&hit.text, 160));
    }
    out
}

pub fn search_json(response: &SearchResponse) -> Value {
    json!({
        "hits": response.hits.iter().map(|hit| json!({
            "doc_id": hit.doc_id, "score": hit.score, "title": hit.title,
            "text": hit.text, "shard": hit.shard,
            "metadata": serde_json::from_str::<Value>(&hit.metadata_json).unwrap_or(Value::Null),
        })).collect::<Vec<_>>(),
        "shards_total": response.shards_total,
        "shards_answered": response.shards_answered,
        "partial": response.partial,
        "shards_failed": response.shards_failed,
        "strategy": response.strategy,
        "hedges": response.hedges,
    })
}

pub fn ask_text(response: &AskResponse, include_answer: bool) -> String {
    let mut out = String::new();
    if include_answer {
        let _ = writeln!(out, "{}", response.answer);
    }
    let _ = writeln!(out);
    let passages = response
        .retrieval
        .as_ref()
        .map(|retrieval| retrieval.passages.as_slice())
        .unwrap_or_default();
    if !response.sources.is_empty() {
        let _ = writeln!(out, "Sources:");
        for source in &response.sources {
            let title = passages
                .iter()
                .find(|passage| &passage.doc_id == source)
                .map(|passage| passage.title.as_str())
                .unwrap_or_default();
            let _ = writeln!(out, "  - {source}  {title}");
        }
    }
    let _ = writeln!(
        out,
        "Confidence: {:.2}{}",
        response.confidence,
        if response.low_confidence {
            " (low)"
        } else {
            ""
        }
    );
    if let Some(analysis) = &response.analysis {
        let _ = writeln!(
            out,
            "Question: {} ({}), complexity {:.2}",
            query_type_name(analysis.query_type),
            analysis.intent,
            analysis.complexity
        );
    }
    if let Some(retrieval) = &response.retrieval {
        let _ = writeln!(
            out,
            "Retrieval: {}; shards {}/{}{}",
            retrieval.strategy,
            retrieval.shards_answered,
            retrieval.shards_total,
            if retrieval.partial { " (PARTIAL)" } else { "" }
        );
        if let Some(timings) = &retrieval.timings {
            let _ = writeln!(out, "Timings: total {:.1} ms (analyze {:.1}, search {:.1}, generate {:.1}, evaluate {:.1})", timings.total_ms, timings.analyze_ms, timings.search_ms, timings.generate_ms, timings.evaluate_ms);
        }
    }
    out
}

fn analysis_json(analysis: Option<&Analysis>) -> Value {
    let Some(analysis) = analysis else {
        return Value::Null;
    };
    json!({
        "query_type": query_type_name(analysis.query_type),
        "intent": analysis.intent,
        "entities": analysis.entities.iter().map(|entity| json!({"text": entity.text, "kind": entity.kind})).collect::<Vec<_>>(),
        "complexity": analysis.complexity,
        "confidence": analysis.confidence,
        "analyzer": analysis.analyzer,
    })
}

fn retrieval_json(retrieval: Option<&RetrievalInfo>) -> Value {
    let Some(retrieval) = retrieval else {
        return Value::Null;
    };
    let timings = retrieval.timings.unwrap_or_default();
    json!({
        "strategy": retrieval.strategy,
        "shards_total": retrieval.shards_total,
        "shards_answered": retrieval.shards_answered,
        "shards_failed": retrieval.shards_failed,
        "partial": retrieval.partial,
        "hedges": retrieval.hedges,
        "timings": {
            "analyze_ms": timings.analyze_ms, "search_ms": timings.search_ms,
            "generate_ms": timings.generate_ms, "evaluate_ms": timings.evaluate_ms,
            "total_ms": timings.total_ms,
        },
        "passages": retrieval.passages.iter().map(|passage| json!({
            "number": passage.number, "doc_id": passage.doc_id, "title": passage.title,
            "text": passage.text, "score": passage.score,
        })).collect::<Vec<_>>(),
    })
}

fn evaluation_json(evaluation: Option<&Evaluation>) -> Value {
    let Some(evaluation) = evaluation else {
        return Value::Null;
    };
    json!({
        "evaluation": evaluation.evaluation,
        "groundedness": evaluation.groundedness,
        "relevance": evaluation.relevance,
        "citation_validity": evaluation.citation_validity,
        "confidence": evaluation.confidence,
        "evaluator": evaluation.evaluator,
    })
}

pub fn ask_json(response: &AskResponse) -> Value {
    json!({
        "answer": response.answer,
        "reasoning": response.reasoning,
        "confidence": response.confidence,
        "low_confidence": response.low_confidence,
        "sources": response.sources,
        "generator": response.generator,
        "cached": response.cached,
        "analysis": analysis_json(response.analysis.as_ref()),
        "retrieval": retrieval_json(response.retrieval.as_ref()),
        "evaluation": evaluation_json(response.evaluation.as_ref()),
    })
}

pub fn ingest_json(summary: &IngestSummary, malformed_lines: usize) -> Value {
    json!({
        "accepted": summary.accepted,
        "rejected": summary.rejected,
        "malformed_lines": malformed_lines,
        "errors": summary.errors.iter().map(|error| json!({
            "index": error.index, "id": error.id, "code": error.code,
            "field": error.field, "message": error.message,
        })).collect::<Vec<_>>(),
    })
}

pub fn status_text(response: &ClusterStatusResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {}: {} shard(s), {} document(s)",
        response.cluster, response.shards, response.num_docs
    );
    if !response.shards_unavailable.is_empty() {
        let _ = writeln!(out, "UNAVAILABLE shards: {:?}", response.shards_unavailable);
    }
    for member in &response.members {
        let placement = if member.role == "retriever" {
            format!(" shard {} replica {}", member.shard, member.replica)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:<10} {}{}  {}",
            member.role,
            member.address,
            placement,
            if member.ready { "ready" } else { "not ready" }
        );
    }
    out
}

pub fn status_json(response: &ClusterStatusResponse) -> Value {
    json!({
        "cluster": response.cluster,
        "shards": response.shards,
        "num_docs": response.num_docs,
        "num_vectors": response.num_vectors,
        "shards_unavailable": response.shards_unavailable,
        "members": response.members.iter().map(|member| json!({
            "node_id": member.node_id, "role": member.role, "address": member.address,
            "shard": member.shard, "replica": member.replica, "ready": member.ready,
            "version": member.version,
        })).collect::<Vec<_>>(),
    })
}

/// One collection, as `quarry collection` prints it.
pub fn collection_text(info: &CollectionInfo) -> String {
    let mut out = info.name.clone();
    if !info.description.is_empty() {
        out.push_str(&format!(" — {}", info.description));
    }
    out.push('\n');
    if info.num_docs > 0 || info.num_vectors > 0 || !info.shards_unavailable.is_empty() {
        out.push_str(&format!(
            "  {} documents, {} vectors, {} shards",
            info.num_docs, info.num_vectors, info.shards
        ));
        if !info.shards_unavailable.is_empty() {
            out.push_str(&format!(
                " (shards {:?} did not answer)",
                info.shards_unavailable
            ));
        }
        out.push('\n');
    }
    out
}

pub fn collection_json(info: &CollectionInfo) -> Value {
    json!({
        "name": info.name,
        "description": info.description,
        "created_at_ms": info.created_at_ms,
        "num_docs": info.num_docs,
        "num_vectors": info.num_vectors,
        "shards": info.shards,
        "shards_unavailable": info.shards_unavailable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_proto::v1::Hit;

    #[test]
    fn search_output_names_partial_results() {
        let response = SearchResponse {
            hits: vec![Hit {
                doc_id: "d1".into(),
                score: 1.5,
                title: "T".into(),
                text: "x".repeat(300),
                shard: 1,
                ..Hit::default()
            }],
            shards_total: 2,
            shards_answered: 1,
            partial: true,
            strategy: "keyword".into(),
            shards_failed: vec![0],
            hedges: 0,
        };
        let text = search_text(&response);
        assert!(text.contains("shards 1/2 (PARTIAL)"));
        assert!(text.contains("[d1]"));
        assert_eq!(search_json(&response)["hits"][0]["shard"], 1);
        assert_eq!(search_json(&response)["shards_failed"][0], 0);
    }
}
