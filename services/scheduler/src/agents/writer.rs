//! The writer: one of three tasks through the generator, in a given style and for a given
//! audience, from the research's sources — `outline` (key points), `draft` (a cited text
//! following the outline), `edit` (the draft rewritten and closed with its source list).
//! Its input is JSON: {"task", "topic", "style", "audience"}.

use quarry_proto::v1::GenerateRequest;
use serde::Deserialize;

use super::sources::{cited_ids, sources_from, writing_from};
use super::{AgentError, Agents, Source, StepContext, WriterResult};

#[derive(Debug, Deserialize)]
struct WriterInput {
    task: String,
    topic: String,
    #[serde(default = "default_style")]
    style: String,
    #[serde(default = "default_audience")]
    audience: String,
}

fn default_style() -> String {
    "plain".to_string()
}

fn default_audience() -> String {
    "general readers".to_string()
}

pub async fn run(agents: &Agents, context: &StepContext) -> Result<String, AgentError> {
    let input: WriterInput = serde_json::from_str(&context.input).map_err(|error| {
        AgentError::Input(format!(
            "a writer's input is JSON {{\"task\", \"topic\", \"style\", \"audience\"}}: {error}"
        ))
    })?;
    let sources = sources_from(&context.dependencies);
    if sources.is_empty() {
        return Err(AgentError::Input(
            "no research sources among the dependencies' results".to_string(),
        ));
    }
    let (question, budget) = match input.task.as_str() {
        "outline" => (
            format!(
                "Outline the key points about {} for {}, in a {} style.",
                input.topic, input.audience, input.style
            ),
            600,
        ),
        "draft" => {
            let outline = writing_from(&context.dependencies, "outline")
                .map(|outline| outline.text)
                .unwrap_or_default();
            (
                format!(
                    "Write about {} for {}, in a {} style, following this outline: {}",
                    input.topic, input.audience, input.style, outline
                ),
                1500,
            )
        }
        "edit" => {
            let draft = writing_from(&context.dependencies, "draft").ok_or_else(|| {
                AgentError::Input("edit needs a draft among its dependencies".to_string())
            })?;
            (
                format!(
                    "Edit this draft about {} for {}, in a {} style, keeping its citations: {}",
                    input.topic, input.audience, input.style, draft.text
                ),
                1500,
            )
        }
        other => {
            return Err(AgentError::Input(format!(
                "unknown writer task {other:?} (outline, draft, edit)"
            )))
        }
    };
    let generated = agents
        .generator()?
        .generate(GenerateRequest {
            question,
            passages: sources.iter().map(Source::passage).collect(),
            analysis: None,
            max_answer_chars: budget,
        })
        .await
        .map_err(|status| AgentError::downstream("generator", status))?
        .into_inner();
    let text = match input.task.as_str() {
        "outline" => outline_text(&input.topic, &generated.answer),
        "edit" => edited_text(&input, &generated.answer, &sources),
        _ => generated.answer.clone(),
    };
    let cited = cited_ids(&text, &sources);
    let result = WriterResult {
        task: input.task,
        text,
        body: generated.answer,
        cited,
        sources,
    };
    serde_json::to_string(&result).map_err(|error| AgentError::Failed(error.to_string()))
}

/// The generator's sentences as numbered points.
fn outline_text(topic: &str, answer: &str) -> String {
    let mut outline = format!("Outline: {topic}\n");
    let points = answer
        .split_inclusive(['.', '!', '?'])
        .map(str::trim)
        .filter(|sentence| !sentence.is_empty());
    for (number, point) in points.enumerate() {
        outline.push_str(&format!("{}. {point}\n", number + 1));
    }
    outline
}

/// The edited text under a title line, closed by the sources it cites.
fn edited_text(input: &WriterInput, answer: &str, sources: &[Source]) -> String {
    let mut text = format!(
        "{} (for {}, {} style)\n\n{}\n",
        input.topic,
        input.audience,
        input.style,
        answer.trim()
    );
    let cited: Vec<&Source> = sources
        .iter()
        .filter(|source| answer.contains(&format!("[{}]", source.number)))
        .collect();
    if !cited.is_empty() {
        text.push_str("\nSources:\n");
        for source in cited {
            text.push_str(&format!(
                "[{}] {} ({})\n",
                source.number, source.title, source.doc_id
            ));
        }
    }
    text
}
