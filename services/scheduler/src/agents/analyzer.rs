//! The analyzer agent: the analyzer service's reading of the topic (query type, intent,
//! entities, complexity), with how much the research found on it when a dependency did research.

use quarry_proto::v1::AnalyzeRequest;

use super::sources::sources_from;
use super::{topic_of, AgentError, Agents, StepContext};

pub async fn run(agents: &Agents, context: &StepContext) -> Result<String, AgentError> {
    let topic = topic_of(&context.input)?;
    let analysis = agents
        .analyzer()?
        .analyze(AnalyzeRequest {
            query: topic.clone(),
            embed: false,
        })
        .await
        .map_err(|status| AgentError::downstream("analyzer", status))?
        .into_inner()
        .analysis
        .unwrap_or_default();
    let sources = sources_from(&context.dependencies);
    let query_type = quarry_proto::v1::QueryType::try_from(analysis.query_type)
        .map(|kind| {
            kind.as_str_name()
                .trim_start_matches("QUERY_TYPE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let result = serde_json::json!({
        "topic": topic,
        "query_type": query_type,
        "intent": analysis.intent,
        "entities": analysis.entities.iter().map(|entity| &entity.text).collect::<Vec<_>>(),
        "complexity": analysis.complexity,
        "sources_found": sources.len(),
        "source_titles": sources.iter().map(|source| &source.title).collect::<Vec<_>>(),
    });
    Ok(result.to_string())
}
