//! One attempt of a step on its own task: the agent gets the step's input and its
//! dependencies' results, is bounded by the step's timeout, is stopped by its token (cancel,
//! loss of leadership), and its outcome goes back to the engine. An agent that panics fails
//! its attempt instead of leaving the step running.

use std::sync::Arc;
use std::time::Duration;

use quarry_proto::v1::{AgentRole, Workflow};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::agents::{Agents, DependencyResult, StepContext};
use crate::dag::Outcome;
use crate::model::spec;

/// An attempt's end, reported to the engine.
pub struct Finished {
    pub workflow_id: String,
    pub position: usize,
    pub attempt: u32,
    pub outcome: Outcome,
}

/// Everything an attempt needs, taken from the workflow when it starts.
pub struct Attempt {
    context: StepContext,
    position: usize,
    timeout_ms: u32,
}

impl Attempt {
    pub fn new(
        workflow: &Workflow,
        position: usize,
        attempt: u32,
        default_timeout_ms: u32,
    ) -> Self {
        let step_spec = spec(&workflow.steps[position]);
        let dependencies = step_spec
            .depends_on
            .iter()
            .filter_map(|dependency| {
                workflow
                    .steps
                    .iter()
                    .find(|step| &spec(step).id == dependency)
            })
            .map(|step| DependencyResult {
                step_id: spec(step).id.clone(),
                role: spec(step).role(),
                result: step.result.clone(),
            })
            .collect();
        let timeout_ms = if step_spec.timeout_ms == 0 {
            default_timeout_ms
        } else {
            step_spec.timeout_ms
        };
        Self {
            context: StepContext {
                workflow_id: workflow.id.clone(),
                step_id: step_spec.id.clone(),
                role: AgentRole::try_from(step_spec.role).unwrap_or(AgentRole::Unspecified),
                input: step_spec.input.clone(),
                attempt,
                dependencies,
            },
            position,
            timeout_ms,
        }
    }

    pub fn spawn(
        self,
        agents: Arc<Agents>,
        token: CancellationToken,
        report: mpsc::UnboundedSender<Finished>,
    ) {
        let Self {
            context,
            position,
            timeout_ms,
        } = self;
        debug!(
            workflow = context.workflow_id,
            step = context.step_id,
            attempt = context.attempt,
            "step started"
        );
        let workflow_id = context.workflow_id.clone();
        let attempt = context.attempt;
        tokio::spawn(async move {
            let work = tokio::spawn(async move { agents.run(context).await });
            let abort = work.abort_handle();
            let limit = Duration::from_millis(u64::from(timeout_ms));
            let outcome = tokio::select! {
                _ = token.cancelled() => {
                    abort.abort();
                    return;
                }
                joined = tokio::time::timeout(limit, work) => match joined {
                    Err(_) => {
                        abort.abort();
                        Outcome::Failed(format!("timed out after {timeout_ms} ms"))
                    }
                    Ok(Err(join_error)) => Outcome::Failed(format!("the agent stopped: {join_error}")),
                    Ok(Ok(Err(agent_error))) => Outcome::Failed(agent_error.to_string()),
                    Ok(Ok(Ok(result))) => Outcome::Completed(result),
                },
            };
            let _ = report.send(Finished {
                workflow_id,
                position,
                attempt,
                outcome,
            });
        });
    }
}
