//! Submit-time validation: a workflow is refused with INVALID_ARGUMENT naming the step when a
//! step id is empty or repeated, a role is unknown, a dependency is unknown, the steps form a
//! cycle, or a timeout or retry count is out of bounds.

use std::collections::{HashMap, HashSet};

use quarry_proto::v1::{AgentRole, SubmitWorkflowRequest};

use crate::error::SchedulerError;

/// Bounds a submitted workflow must respect (from `[scheduler]`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_steps: usize,
    pub max_step_timeout_ms: u32,
    pub max_retries: u32,
    pub test_roles: bool,
}

const MAX_ID_BYTES: usize = 128;
const MAX_NAME_BYTES: usize = 256;
const MAX_INPUT_BYTES: usize = 64 * 1024;
/// A submitted workflow's encoded size: its state, results included, must stay within one
/// etcd value (1.5 MiB), so the request itself gets a fraction of that.
pub const MAX_SUBMISSION_BYTES: usize = 256 * 1024;

fn invalid(message: String) -> SchedulerError {
    SchedulerError::InvalidArgument(message)
}

/// Checks a submitted workflow; the first problem found is returned.
pub fn validate_submission(
    request: &SubmitWorkflowRequest,
    limits: &Limits,
) -> Result<(), SchedulerError> {
    if request.name.trim().is_empty() {
        return Err(invalid("name must not be empty".to_string()));
    }
    if request.name.len() > MAX_NAME_BYTES {
        return Err(invalid(format!(
            "name is longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    if request.steps.is_empty() {
        return Err(invalid("steps must not be empty".to_string()));
    }
    if request.steps.len() > limits.max_steps {
        return Err(invalid(format!(
            "steps: {} steps, at most {} allowed",
            request.steps.len(),
            limits.max_steps
        )));
    }
    let encoded = prost::Message::encoded_len(request);
    if encoded > MAX_SUBMISSION_BYTES {
        return Err(invalid(format!(
            "steps: the workflow takes {encoded} bytes, at most {MAX_SUBMISSION_BYTES} allowed"
        )));
    }
    let mut ids = HashSet::new();
    for step in &request.steps {
        let id = &step.id;
        if id.trim().is_empty() {
            return Err(invalid("steps: a step has an empty id".to_string()));
        }
        if id.len() > MAX_ID_BYTES {
            return Err(invalid(format!(
                "step {id:?}: id is longer than {MAX_ID_BYTES} bytes"
            )));
        }
        if !ids.insert(id.as_str()) {
            return Err(invalid(format!("step {id:?}: duplicate step id")));
        }
        match AgentRole::try_from(step.role) {
            Err(_) | Ok(AgentRole::Unspecified) => {
                return Err(invalid(format!("step {id:?}: unknown role {}", step.role)))
            }
            Ok(AgentRole::Test) if !limits.test_roles => {
                return Err(invalid(format!(
                    "step {id:?}: the test role is disabled (scheduler.test_roles = false)"
                )))
            }
            Ok(_) => {}
        }
        if step.timeout_ms > limits.max_step_timeout_ms {
            return Err(invalid(format!(
                "step {id:?}: timeout_ms {} exceeds the limit of {} ms",
                step.timeout_ms, limits.max_step_timeout_ms
            )));
        }
        if step.max_retries > limits.max_retries {
            return Err(invalid(format!(
                "step {id:?}: max_retries {} exceeds the limit of {}",
                step.max_retries, limits.max_retries
            )));
        }
        if step.input.len() > MAX_INPUT_BYTES {
            return Err(invalid(format!(
                "step {id:?}: input is longer than {MAX_INPUT_BYTES} bytes"
            )));
        }
    }
    for step in &request.steps {
        let mut seen = HashSet::new();
        for dependency in &step.depends_on {
            if dependency == &step.id {
                return Err(invalid(format!("step {:?}: depends on itself", step.id)));
            }
            if !ids.contains(dependency.as_str()) {
                return Err(invalid(format!(
                    "step {:?}: unknown dependency {dependency:?}",
                    step.id
                )));
            }
            if !seen.insert(dependency) {
                return Err(invalid(format!(
                    "step {:?}: dependency {dependency:?} listed twice",
                    step.id
                )));
            }
        }
    }
    if let Some(step_on_cycle) = find_cycle(request) {
        return Err(invalid(format!(
            "step {step_on_cycle:?}: dependencies form a cycle"
        )));
    }
    Ok(())
}

/// A step on a dependency cycle, if there is one (Kahn's algorithm: what cannot be
/// ordered lies on or behind a cycle; walking dependencies from it reaches the cycle).
fn find_cycle(request: &SubmitWorkflowRequest) -> Option<String> {
    let index: HashMap<&str, usize> = request
        .steps
        .iter()
        .enumerate()
        .map(|(position, step)| (step.id.as_str(), position))
        .collect();
    let mut unmet: Vec<usize> = request
        .steps
        .iter()
        .map(|step| step.depends_on.len())
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); request.steps.len()];
    for (position, step) in request.steps.iter().enumerate() {
        for dependency in &step.depends_on {
            dependents[index[dependency.as_str()]].push(position);
        }
    }
    let mut queue: Vec<usize> = (0..request.steps.len())
        .filter(|&position| unmet[position] == 0)
        .collect();
    let mut ordered = 0;
    while let Some(position) = queue.pop() {
        ordered += 1;
        for &dependent in &dependents[position] {
            unmet[dependent] -= 1;
            if unmet[dependent] == 0 {
                queue.push(dependent);
            }
        }
    }
    if ordered == request.steps.len() {
        return None;
    }
    // Walk unordered dependencies until a step repeats: that step is on a cycle.
    let mut current = (0..request.steps.len()).find(|&position| unmet[position] > 0)?;
    let mut visited = HashSet::new();
    while visited.insert(current) {
        current = request.steps[current]
            .depends_on
            .iter()
            .map(|dependency| index[dependency.as_str()])
            .find(|&dependency| unmet[dependency] > 0)?;
    }
    Some(request.steps[current].id.clone())
}

#[cfg(test)]
mod tests {
    use quarry_proto::v1::StepSpec;

    use super::*;

    fn limits() -> Limits {
        Limits {
            max_steps: 100,
            max_step_timeout_ms: 60_000,
            max_retries: 5,
            test_roles: false,
        }
    }

    fn step(id: &str, depends_on: &[&str]) -> StepSpec {
        StepSpec {
            id: id.to_string(),
            role: AgentRole::Noop as i32,
            depends_on: depends_on.iter().map(|id| id.to_string()).collect(),
            ..StepSpec::default()
        }
    }

    fn request(steps: Vec<StepSpec>) -> SubmitWorkflowRequest {
        SubmitWorkflowRequest {
            name: "w".to_string(),
            description: String::new(),
            steps,
        }
    }

    fn error_of(steps: Vec<StepSpec>) -> String {
        validate_submission(&request(steps), &limits())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn accepts_a_diamond() {
        let steps = vec![
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a"]),
            step("d", &["b", "c"]),
        ];
        validate_submission(&request(steps), &limits()).unwrap();
    }

    #[test]
    fn names_the_step_of_each_problem() {
        assert!(
            error_of(vec![step("a", &["zz"])]).contains("step \"a\": unknown dependency \"zz\"")
        );
        assert!(error_of(vec![step("a", &[]), step("a", &[])]).contains("step \"a\": duplicate"));
        let cycle = error_of(vec![
            step("start", &[]),
            step("x", &["start", "z"]),
            step("y", &["x"]),
            step("z", &["y"]),
            step("after", &["z"]),
        ]);
        assert!(cycle.contains("cycle"), "{cycle}");
        assert!(
            ["\"x\"", "\"y\"", "\"z\""]
                .iter()
                .any(|id| cycle.contains(id)),
            "{cycle}"
        );
        assert!(error_of(vec![step("self", &["self"])]).contains("depends on itself"));
        let mut unknown_role = step("r", &[]);
        unknown_role.role = 42;
        assert!(error_of(vec![unknown_role]).contains("step \"r\": unknown role 42"));
        let mut test_role = step("t", &[]);
        test_role.role = AgentRole::Test as i32;
        assert!(error_of(vec![test_role]).contains("test role is disabled"));
        let mut slow = step("slow", &[]);
        slow.timeout_ms = 60_001;
        assert!(error_of(vec![slow]).contains("step \"slow\": timeout_ms"));
        let mut retries = step("retry", &[]);
        retries.max_retries = 6;
        assert!(error_of(vec![retries]).contains("step \"retry\": max_retries"));
        assert!(error_of(vec![]).contains("steps must not be empty"));
        assert!(error_of(vec![step(" ", &[])]).contains("empty id"));
        let big: Vec<StepSpec> = (0..5)
            .map(|number| StepSpec {
                input: "x".repeat(60 * 1024),
                ..step(&format!("big{number}"), &[])
            })
            .collect();
        assert!(error_of(big).contains("at most 262144 allowed"));
    }
}
