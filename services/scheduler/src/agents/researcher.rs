//! The researcher: searches the cluster (hybrid, through the gateway) for its topic, then
//! has the generator summarise the findings with [n] citations; returns the summary and the
//! sources it found.

use quarry_proto::v1::{GenerateRequest, SearchMode, SearchRequest};

use super::{topic_of, AgentError, Agents, ResearchResult, Source, StepContext};

const SOURCES: u32 = 5;
const SUMMARY_CHARS: u32 = 900;

pub async fn run(agents: &Agents, context: &StepContext) -> Result<String, AgentError> {
    let topic = topic_of(&context.input)?;
    let hits = agents
        .gateway()?
        .search(agents.gateway_request(SearchRequest {
            query: topic.clone(),
            k: SOURCES,
            mode: SearchMode::Hybrid as i32,
            fusion: 0,
            ..SearchRequest::default()
        }))
        .await
        .map_err(|status| AgentError::downstream("gateway search", status))?
        .into_inner()
        .hits;
    if hits.is_empty() {
        return Err(AgentError::Failed(format!(
            "the search for {topic:?} found no documents"
        )));
    }
    let sources: Vec<Source> = hits
        .into_iter()
        .enumerate()
        .map(|(position, hit)| Source {
            number: position as u32 + 1,
            doc_id: hit.doc_id,
            title: hit.title,
            text: hit.text,
        })
        .collect();
    let summary = agents
        .generator()?
        .generate(GenerateRequest {
            question: topic.clone(),
            passages: sources.iter().map(Source::passage).collect(),
            analysis: None,
            max_answer_chars: SUMMARY_CHARS,
        })
        .await
        .map_err(|status| AgentError::downstream("generator", status))?
        .into_inner()
        .answer;
    let research = ResearchResult {
        topic,
        summary,
        sources,
    };
    serde_json::to_string(&research).map_err(|error| AgentError::Failed(error.to_string()))
}
