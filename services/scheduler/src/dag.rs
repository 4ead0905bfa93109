//! The state machine of one workflow, without I/O: pending steps become ready when every
//! dependency completed and are cancelled when one failed or was cancelled; an attempt's
//! outcome completes a step, schedules its retry with exponential backoff, or fails it;
//! cancelling a workflow cancels every unfinished step; resuming after a crash turns running
//! steps back into ready ones (their attempt stays counted).

use std::collections::HashMap;

use quarry_proto::v1::{StepState, Workflow, WorkflowState};

use crate::model::{spec, step_is_terminal};

/// How one attempt of a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed(String),
    /// Failed or timed out; the message says why.
    Failed(String),
}

/// Exponential backoff between attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl RetryPolicy {
    /// Wait after failed attempt number `attempt` (1-based): backoff · 2^(attempt−1), capped.
    pub fn backoff_after(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(30);
        self.backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff_ms)
    }
}

/// Settles pending steps until nothing changes, then the workflow's own state. Returns
/// whether anything changed.
pub fn advance(workflow: &mut Workflow, now_ms: i64) -> bool {
    let mut changed = false;
    let index: HashMap<String, usize> = workflow
        .steps
        .iter()
        .enumerate()
        .map(|(position, step)| (spec(step).id.clone(), position))
        .collect();
    loop {
        let mut changed_this_pass = false;
        for position in 0..workflow.steps.len() {
            if workflow.steps[position].state() != StepState::Pending {
                continue;
            }
            let mut all_completed = true;
            let mut blocked_by = None;
            for dependency in &spec(&workflow.steps[position]).depends_on {
                let Some(&dependency_position) = index.get(dependency) else {
                    blocked_by = Some((dependency.clone(), "is missing"));
                    break;
                };
                match workflow.steps[dependency_position].state() {
                    StepState::Completed => {}
                    StepState::Failed => {
                        blocked_by = Some((dependency.clone(), "failed"));
                        break;
                    }
                    StepState::Cancelled => {
                        blocked_by = Some((dependency.clone(), "was cancelled"));
                        break;
                    }
                    _ => all_completed = false,
                }
            }
            let step = &mut workflow.steps[position];
            if let Some((dependency, why)) = blocked_by {
                step.set_state(StepState::Cancelled);
                step.error = format!("dependency {dependency:?} {why}");
                step.finished_at_unix_ms = now_ms;
                changed_this_pass = true;
            } else if all_completed {
                step.set_state(StepState::Ready);
                changed_this_pass = true;
            }
        }
        if !changed_this_pass {
            break;
        }
        changed = true;
    }
    if workflow.state() == WorkflowState::Running && workflow.steps.iter().all(step_is_terminal) {
        let final_state = if workflow
            .steps
            .iter()
            .all(|step| step.state() == StepState::Completed)
        {
            WorkflowState::Completed
        } else {
            WorkflowState::Failed
        };
        workflow.set_state(final_state);
        workflow.finished_at_unix_ms = now_ms;
        changed = true;
    }
    changed
}

/// Whether a ready step may start now (its retry backoff, if any, has passed).
pub fn startable(workflow: &Workflow, position: usize, now_ms: i64) -> bool {
    let step = &workflow.steps[position];
    workflow.state() == WorkflowState::Running
        && step.state() == StepState::Ready
        && step.retry_at_unix_ms <= now_ms
}

/// Marks a ready step running and counts the attempt; returns the attempt number.
pub fn start_step(workflow: &mut Workflow, position: usize, now_ms: i64) -> u32 {
    let step = &mut workflow.steps[position];
    debug_assert_eq!(step.state(), StepState::Ready);
    step.set_state(StepState::Running);
    step.attempts += 1;
    step.started_at_unix_ms = now_ms;
    step.finished_at_unix_ms = 0;
    step.retry_at_unix_ms = 0;
    step.attempts
}

/// Applies an attempt's outcome; an outcome for an attempt that is no longer running (a
/// cancelled step, a superseded attempt) is ignored and `false` returned.
pub fn finish_step(
    workflow: &mut Workflow,
    position: usize,
    attempt: u32,
    outcome: Outcome,
    now_ms: i64,
    policy: &RetryPolicy,
) -> bool {
    let Some(step) = workflow.steps.get_mut(position) else {
        return false;
    };
    if step.state() != StepState::Running || step.attempts != attempt {
        return false;
    }
    let max_retries = spec(step).max_retries;
    match outcome {
        Outcome::Completed(result) => {
            step.set_state(StepState::Completed);
            step.result = result;
            step.error.clear();
            step.finished_at_unix_ms = now_ms;
        }
        Outcome::Failed(error) if attempt <= max_retries => {
            step.set_state(StepState::Ready);
            step.error = error;
            step.retry_at_unix_ms = now_ms + policy.backoff_after(attempt) as i64;
        }
        Outcome::Failed(error) => {
            step.set_state(StepState::Failed);
            step.error = error;
            step.finished_at_unix_ms = now_ms;
        }
    }
    advance(workflow, now_ms);
    true
}

/// Cancels every unfinished step and the workflow; returns the positions of steps that were
/// running (their agents must be stopped). A finished workflow is left as it is.
pub fn cancel_workflow(workflow: &mut Workflow, now_ms: i64) -> Vec<usize> {
    if workflow.state() != WorkflowState::Running {
        return Vec::new();
    }
    let mut were_running = Vec::new();
    for (position, step) in workflow.steps.iter_mut().enumerate() {
        if step_is_terminal(step) {
            continue;
        }
        if step.state() == StepState::Running {
            were_running.push(position);
        }
        step.set_state(StepState::Cancelled);
        step.error = "workflow cancelled".to_string();
        step.finished_at_unix_ms = now_ms;
    }
    workflow.set_state(WorkflowState::Cancelled);
    workflow.finished_at_unix_ms = now_ms;
    were_running
}

/// After a crash or a change of leader: a step that was running is retried (steps run at
/// least once), its interrupted attempt still counted; completed steps stay completed.
pub fn resume(workflow: &mut Workflow, now_ms: i64) {
    for step in &mut workflow.steps {
        if step.state() == StepState::Running {
            step.set_state(StepState::Ready);
            step.error = "interrupted: its scheduler stopped while it ran".to_string();
            step.retry_at_unix_ms = 0;
        }
    }
    advance(workflow, now_ms);
}

#[cfg(test)]
mod tests {
    use quarry_proto::v1::{AgentRole, StepSpec, SubmitWorkflowRequest};

    use super::*;
    use crate::model::new_workflow;

    const POLICY: RetryPolicy = RetryPolicy {
        backoff_ms: 100,
        max_backoff_ms: 1000,
    };

    fn workflow(steps: &[(&str, &[&str], u32)]) -> Workflow {
        let request = SubmitWorkflowRequest {
            name: "w".to_string(),
            description: String::new(),
            steps: steps
                .iter()
                .map(|(id, depends_on, max_retries)| StepSpec {
                    id: id.to_string(),
                    role: AgentRole::Noop as i32,
                    depends_on: depends_on.iter().map(|id| id.to_string()).collect(),
                    max_retries: *max_retries,
                    ..StepSpec::default()
                })
                .collect(),
        };
        let mut workflow = new_workflow("wf".to_string(), request);
        advance(&mut workflow, 0);
        workflow
    }

    fn states(workflow: &Workflow) -> Vec<StepState> {
        workflow.steps.iter().map(|step| step.state()).collect()
    }

    #[test]
    fn a_step_is_ready_only_when_every_dependency_completed() {
        let mut flow = workflow(&[("a", &[], 0), ("b", &[], 0), ("c", &["a", "b"], 0)]);
        use StepState::*;
        assert_eq!(states(&flow), [Ready, Ready, Pending]);
        let attempt = start_step(&mut flow, 0, 1);
        assert!(finish_step(
            &mut flow,
            0,
            attempt,
            Outcome::Completed("x".into()),
            2,
            &POLICY
        ));
        assert_eq!(states(&flow), [Completed, Ready, Pending]);
        let attempt = start_step(&mut flow, 1, 3);
        finish_step(
            &mut flow,
            1,
            attempt,
            Outcome::Completed("y".into()),
            4,
            &POLICY,
        );
        assert_eq!(states(&flow), [Completed, Completed, Ready]);
        let attempt = start_step(&mut flow, 2, 5);
        finish_step(
            &mut flow,
            2,
            attempt,
            Outcome::Completed("z".into()),
            6,
            &POLICY,
        );
        assert_eq!(flow.state(), WorkflowState::Completed);
        assert_eq!(flow.finished_at_unix_ms, 6);
    }

    #[test]
    fn a_failure_cancels_its_dependents_transitively_but_not_independent_branches() {
        use StepState::*;
        let mut flow = workflow(&[
            ("bad", &[], 0),
            ("child", &["bad"], 0),
            ("grandchild", &["child"], 0),
            ("other", &[], 0),
        ]);
        let attempt = start_step(&mut flow, 0, 1);
        finish_step(
            &mut flow,
            0,
            attempt,
            Outcome::Failed("boom".into()),
            2,
            &POLICY,
        );
        assert_eq!(states(&flow), [Failed, Cancelled, Cancelled, Ready]);
        assert!(flow.steps[1].error.contains("\"bad\" failed"));
        assert_eq!(
            flow.state(),
            WorkflowState::Running,
            "the other branch goes on"
        );
        let attempt = start_step(&mut flow, 3, 3);
        finish_step(
            &mut flow,
            3,
            attempt,
            Outcome::Completed(String::new()),
            4,
            &POLICY,
        );
        assert_eq!(states(&flow)[3], Completed);
        assert_eq!(flow.state(), WorkflowState::Failed);
    }

    #[test]
    fn failures_retry_with_exponential_backoff_until_max_retries() {
        let mut flow = workflow(&[("flaky", &[], 2)]);
        let first = start_step(&mut flow, 0, 1000);
        finish_step(
            &mut flow,
            0,
            first,
            Outcome::Failed("one".into()),
            1000,
            &POLICY,
        );
        assert_eq!(flow.steps[0].state(), StepState::Ready);
        assert_eq!(flow.steps[0].retry_at_unix_ms, 1100);
        assert!(!startable(&flow, 0, 1099));
        assert!(startable(&flow, 0, 1100));
        let second = start_step(&mut flow, 0, 1100);
        finish_step(
            &mut flow,
            0,
            second,
            Outcome::Failed("two".into()),
            1100,
            &POLICY,
        );
        assert_eq!(flow.steps[0].retry_at_unix_ms, 1300, "doubled");
        let third = start_step(&mut flow, 0, 1300);
        assert_eq!(third, 3);
        finish_step(
            &mut flow,
            0,
            third,
            Outcome::Failed("three".into()),
            1300,
            &POLICY,
        );
        assert_eq!(flow.steps[0].state(), StepState::Failed);
        assert_eq!(flow.steps[0].error, "three");
        assert_eq!(flow.state(), WorkflowState::Failed);
        assert_eq!(POLICY.backoff_after(10), 1000, "capped");
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let mut flow = workflow(&[("a", &[], 1)]);
        let attempt = start_step(&mut flow, 0, 1);
        assert!(!finish_step(
            &mut flow,
            0,
            attempt + 1,
            Outcome::Completed(String::new()),
            2,
            &POLICY
        ));
        cancel_workflow(&mut flow, 3);
        assert!(!finish_step(
            &mut flow,
            0,
            attempt,
            Outcome::Completed(String::new()),
            4,
            &POLICY
        ));
        assert_eq!(flow.steps[0].state(), StepState::Cancelled);
    }

    #[test]
    fn cancel_reports_running_steps_and_cancels_the_rest() {
        let mut flow = workflow(&[("a", &[], 0), ("b", &["a"], 0), ("c", &[], 0)]);
        start_step(&mut flow, 0, 1);
        let running = cancel_workflow(&mut flow, 2);
        assert_eq!(running, [0]);
        assert!(flow
            .steps
            .iter()
            .all(|step| step.state() == StepState::Cancelled));
        assert_eq!(flow.state(), WorkflowState::Cancelled);
        assert!(cancel_workflow(&mut flow, 3).is_empty(), "idempotent");
    }

    #[test]
    fn resume_retries_running_steps_and_keeps_completed_ones() {
        let mut flow = workflow(&[("a", &[], 0), ("b", &["a"], 0)]);
        let attempt = start_step(&mut flow, 0, 1);
        finish_step(
            &mut flow,
            0,
            attempt,
            Outcome::Completed("done".into()),
            2,
            &POLICY,
        );
        start_step(&mut flow, 1, 3);
        resume(&mut flow, 10);
        assert_eq!(flow.steps[0].state(), StepState::Completed);
        assert_eq!(flow.steps[1].state(), StepState::Ready);
        assert_eq!(flow.steps[1].attempts, 1, "the interrupted attempt counts");
        assert_eq!(start_step(&mut flow, 1, 11), 2);
    }
}
