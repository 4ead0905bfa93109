//! Built-in workflow templates. `research_and_write(topic, style, audience)`: research
//! (search + summary) → analyze → outline → draft → edit → review.

use quarry_proto::v1::{AgentRole, StepSpec, SubmitWorkflowRequest};

fn step(
    id: &str,
    role: AgentRole,
    description: &str,
    input: String,
    depends_on: &[&str],
) -> StepSpec {
    StepSpec {
        id: id.to_string(),
        role: role as i32,
        description: description.to_string(),
        input,
        depends_on: depends_on.iter().map(|id| id.to_string()).collect(),
        priority: 0,
        timeout_ms: 120_000,
        max_retries: 2,
    }
}

pub fn research_and_write(topic: &str, style: &str, audience: &str) -> SubmitWorkflowRequest {
    let writer = |task: &str| {
        serde_json::json!({ "task": task, "topic": topic, "style": style, "audience": audience })
            .to_string()
    };
    let topic_input = serde_json::json!({ "topic": topic }).to_string();
    SubmitWorkflowRequest {
        name: "research_and_write".to_string(),
        description: format!(
            "research and write about {topic:?} in a {style} style for {audience}"
        ),
        steps: vec![
            step(
                "research",
                AgentRole::Researcher,
                "search the corpus and summarise the findings with sources",
                topic_input.clone(),
                &[],
            ),
            step(
                "analyze",
                AgentRole::Analyzer,
                "analyse the topic",
                topic_input.clone(),
                &["research"],
            ),
            step(
                "outline",
                AgentRole::Writer,
                "outline the piece",
                writer("outline"),
                &["research", "analyze"],
            ),
            step(
                "draft",
                AgentRole::Writer,
                "write a cited draft following the outline",
                writer("draft"),
                &["outline", "research"],
            ),
            step(
                "edit",
                AgentRole::Writer,
                "edit the draft for the audience and style",
                writer("edit"),
                &["draft", "research"],
            ),
            step(
                "review",
                AgentRole::Reviewer,
                "judge the edited draft against the research",
                topic_input,
                &["edit", "research"],
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{validate_submission, Limits};

    #[test]
    fn the_template_is_a_valid_workflow() {
        let request = research_and_write("tides", "plain", "students");
        let limits = Limits {
            max_steps: 100,
            max_step_timeout_ms: 3_600_000,
            max_retries: 10,
            test_roles: false,
        };
        validate_submission(&request, &limits).unwrap();
        assert_eq!(request.steps.len(), 6);
    }
}
