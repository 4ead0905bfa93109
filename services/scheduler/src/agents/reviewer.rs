//! The reviewer: the evaluator's judgement of the latest draft (the edited one, else the
//! draft) against the research's sources; approved when the evaluator's confidence reaches
//! the threshold.

use quarry_proto::v1::EvaluateRequest;

use super::sources::{sources_from, writing_from};
use super::{topic_of, AgentError, Agents, Source, StepContext};

/// Confidence from which a draft is approved.
const APPROVAL_CONFIDENCE: f32 = 0.5;

pub async fn run(agents: &Agents, context: &StepContext) -> Result<String, AgentError> {
    let topic = topic_of(&context.input)?;
    let draft = writing_from(&context.dependencies, "edit")
        .or_else(|| writing_from(&context.dependencies, "draft"))
        .ok_or_else(|| AgentError::Input("no draft among the dependencies' results".to_string()))?;
    let mut sources = sources_from(&context.dependencies);
    if sources.is_empty() {
        sources = draft.sources.clone();
    }
    let evaluation = agents
        .evaluator()?
        .evaluate(EvaluateRequest {
            question: topic.clone(),
            answer: if draft.body.is_empty() {
                draft.text.clone()
            } else {
                draft.body.clone()
            },
            passages: sources.iter().map(Source::passage).collect(),
        })
        .await
        .map_err(|status| AgentError::downstream("evaluator", status))?
        .into_inner();
    let verdict = if evaluation.confidence >= APPROVAL_CONFIDENCE {
        "approved"
    } else {
        "needs revision"
    };
    let result = serde_json::json!({
        "topic": topic,
        "verdict": verdict,
        "evaluation": evaluation.evaluation,
        "groundedness": evaluation.groundedness,
        "relevance": evaluation.relevance,
        "citation_validity": evaluation.citation_validity,
        "confidence": evaluation.confidence,
        "evaluator": evaluation.evaluator,
        "cited": draft.cited,
        "draft": draft.text,
    });
    Ok(result.to_string())
}
