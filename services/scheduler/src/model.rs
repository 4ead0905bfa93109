//! The workflow model: the generated `Workflow`/`Step` messages are the state (what is stored
//! and streamed), plus the names of roles and states, the clock, and the JSON/YAML file
//! format `quarry workflow submit FILE` reads.

use std::time::{SystemTime, UNIX_EPOCH};

use quarry_proto::v1::{
    AgentRole, Step, StepSpec, StepState, SubmitWorkflowRequest, Workflow, WorkflowState,
};
use serde::{Deserialize, Serialize};

use crate::error::SchedulerError;

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// A fresh workflow id: creation time and randomness, sortable by creation.
pub fn new_workflow_id() -> String {
    format!("wf-{:013x}-{:08x}", now_unix_ms(), fastrand::u32(..))
}

/// Role names as users write them in files and on the command line.
pub const ROLE_NAMES: [(&str, AgentRole); 8] = [
    ("coordinator", AgentRole::Coordinator),
    ("researcher", AgentRole::Researcher),
    ("analyzer", AgentRole::Analyzer),
    ("writer", AgentRole::Writer),
    ("reviewer", AgentRole::Reviewer),
    ("specialist", AgentRole::Specialist),
    ("noop", AgentRole::Noop),
    ("test", AgentRole::Test),
];

pub fn role_name(role: AgentRole) -> &'static str {
    ROLE_NAMES
        .iter()
        .find(|(_, known)| *known == role)
        .map_or("unspecified", |(name, _)| name)
}

pub fn parse_role(name: &str) -> Option<AgentRole> {
    let wanted = name.trim().to_ascii_lowercase();
    ROLE_NAMES
        .iter()
        .find(|(known, _)| *known == wanted)
        .map(|(_, role)| *role)
}

pub fn step_state_name(state: StepState) -> &'static str {
    match state {
        StepState::Unspecified => "unspecified",
        StepState::Pending => "pending",
        StepState::Ready => "ready",
        StepState::Running => "running",
        StepState::Completed => "completed",
        StepState::Failed => "failed",
        StepState::Cancelled => "cancelled",
    }
}

pub fn workflow_state_name(state: WorkflowState) -> &'static str {
    match state {
        WorkflowState::Unspecified => "unspecified",
        WorkflowState::Running => "running",
        WorkflowState::Completed => "completed",
        WorkflowState::Failed => "failed",
        WorkflowState::Cancelled => "cancelled",
    }
}

pub fn step_is_terminal(step: &Step) -> bool {
    matches!(
        step.state(),
        StepState::Completed | StepState::Failed | StepState::Cancelled
    )
}

pub fn workflow_is_terminal(workflow: &Workflow) -> bool {
    !matches!(
        workflow.state(),
        WorkflowState::Running | WorkflowState::Unspecified
    )
}

/// The spec of a step; every stored step has one (validation guarantees it).
pub fn spec(step: &Step) -> &StepSpec {
    static EMPTY: StepSpec = StepSpec {
        id: String::new(),
        role: 0,
        description: String::new(),
        input: String::new(),
        depends_on: Vec::new(),
        priority: 0,
        timeout_ms: 0,
        max_retries: 0,
    };
    step.spec.as_ref().unwrap_or(&EMPTY)
}

/// A new running workflow from a validated request: every step pending.
pub fn new_workflow(id: String, request: SubmitWorkflowRequest) -> Workflow {
    let steps = request
        .steps
        .into_iter()
        .map(|spec| Step {
            spec: Some(spec),
            state: StepState::Pending as i32,
            ..Step::default()
        })
        .collect();
    Workflow {
        id,
        name: request.name,
        description: request.description,
        steps,
        state: WorkflowState::Running as i32,
        created_at_unix_ms: now_unix_ms(),
        finished_at_unix_ms: 0,
        version: 0,
    }
}

/// A workflow file (`quarry workflow submit FILE`, JSON or YAML).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub steps: Vec<StepFile>,
}

/// One step of a workflow file; `input` may be a string or any JSON/YAML value (sent as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    pub id: String,
    pub role: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub input: serde_json::Value,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub timeout_ms: u32,
    #[serde(default)]
    pub max_retries: u32,
}

impl WorkflowFile {
    /// Parses JSON when the text starts with `{`, YAML otherwise.
    pub fn parse(text: &str) -> Result<Self, SchedulerError> {
        let parsed = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|error| error.to_string())
        } else {
            serde_yaml::from_str(text).map_err(|error| error.to_string())
        };
        parsed.map_err(|error| SchedulerError::InvalidArgument(format!("workflow file: {error}")))
    }

    /// The request to submit; an unknown role name is an error naming the step.
    pub fn into_request(self) -> Result<SubmitWorkflowRequest, SchedulerError> {
        let mut steps = Vec::with_capacity(self.steps.len());
        for step in self.steps {
            let role = parse_role(&step.role).ok_or_else(|| {
                SchedulerError::InvalidArgument(format!(
                    "step {:?}: unknown role {:?} (known: {})",
                    step.id,
                    step.role,
                    ROLE_NAMES.map(|(name, _)| name).join(", ")
                ))
            })?;
            let input = match step.input {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            };
            steps.push(StepSpec {
                id: step.id,
                role: role as i32,
                description: step.description,
                input,
                depends_on: step.depends_on,
                priority: step.priority,
                timeout_ms: step.timeout_ms,
                max_retries: step.max_retries,
            });
        }
        Ok(SubmitWorkflowRequest {
            name: self.name,
            description: self.description,
            steps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_files_become_requests() {
        let yaml = "name: demo\nsteps:\n  - id: a\n    role: noop\n  - id: b\n    role: Test\n    depends_on: [a]\n    input: {sleep_ms: 5}\n    priority: 3\n";
        let request = WorkflowFile::parse(yaml).unwrap().into_request().unwrap();
        assert_eq!(request.steps.len(), 2);
        assert_eq!(request.steps[1].role(), AgentRole::Test);
        assert_eq!(request.steps[1].input, "{\"sleep_ms\":5}");
        assert_eq!(request.steps[1].depends_on, ["a"]);
        let json = r#"{"name":"j","steps":[{"id":"x","role":"researcher","input":"tides"}]}"#;
        let request = WorkflowFile::parse(json).unwrap().into_request().unwrap();
        assert_eq!(request.steps[0].input, "tides");
        let error = WorkflowFile::parse(r#"{"name":"j","steps":[{"id":"x","role":"poet"}]}"#)
            .unwrap()
            .into_request()
            .unwrap_err();
        assert!(error.to_string().contains("step \"x\""), "{error}");
        assert!(WorkflowFile::parse("name: [").is_err());
    }
}
