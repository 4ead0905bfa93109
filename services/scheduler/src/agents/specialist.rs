//! The specialist: asks the cluster its input as a question (the gateway's whole
//! retrieval-augmented path) and returns the cited answer.

use quarry_proto::v1::{AskRequest, SearchMode};

use super::{topic_of, AgentError, Agents, StepContext};

pub async fn run(agents: &Agents, context: &StepContext) -> Result<String, AgentError> {
    let question = topic_of(&context.input)?;
    let answer = agents
        .gateway()?
        .ask(agents.gateway_request(AskRequest {
            question: question.clone(),
            k: 0,
            mode: SearchMode::Hybrid as i32,
            ..AskRequest::default()
        }))
        .await
        .map_err(|status| AgentError::downstream("gateway ask", status))?
        .into_inner();
    let result = serde_json::json!({
        "question": question,
        "answer": answer.answer,
        "sources": answer.sources,
        "confidence": answer.confidence,
    });
    Ok(result.to_string())
}
