//! `quarry workflow`: submit a workflow file or a template, watch, get, cancel and list
//! workflows through the gateway. A watch that the scheduler cuts (a change of leader) is
//! taken up again from the current state; states already printed are not printed twice.

use std::time::{Duration, Instant};

use anyhow::Context;
use quarry_proto::v1::{
    CancelWorkflowRequest, GetWorkflowRequest, ListWorkflowsRequest, Step, StepState,
    SubmitWorkflowRequest, WatchWorkflowRequest, Workflow, WorkflowState,
};
use quarry_scheduler::model::{
    role_name, spec, step_state_name, workflow_is_terminal, workflow_state_name, WorkflowFile,
};
use serde_json::{json, Value};
use tonic::Code;

use crate::cli::{ClientArgs, WorkflowIdArgs, WorkflowSubmitArgs, WorkflowTemplate};
use crate::client::{connect, status_error};

/// How long a cut watch keeps trying to reconnect (a new leader is elected within the TTL).
const REWATCH_PATIENCE: Duration = Duration::from_secs(30);

pub async fn submit(args: &WorkflowSubmitArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let request = WorkflowFile::parse(&text)
        .and_then(WorkflowFile::into_request)
        .map_err(|error| anyhow::anyhow!("{}: {error}", args.file.display()))?;
    submit_request(request, &args.client, args.watch).await
}

pub async fn run_template(template: &WorkflowTemplate) -> anyhow::Result<()> {
    match template {
        WorkflowTemplate::ResearchAndWrite(args) => {
            let request = quarry_scheduler::templates::research_and_write(
                &args.topic,
                &args.style,
                &args.audience,
            );
            submit_request(request, &args.client, !args.detach).await
        }
    }
}

async fn submit_request(
    request: SubmitWorkflowRequest,
    client_args: &ClientArgs,
    then_watch: bool,
) -> anyhow::Result<()> {
    let mut client = connect(client_args).await?;
    let workflow = client
        .submit_workflow(request)
        .await
        .map_err(status_error)?
        .into_inner();
    if !then_watch {
        print_workflow(&workflow, client_args.json);
        return Ok(());
    }
    if !client_args.json {
        println!("submitted {} ({})", workflow.id, workflow.name);
    }
    watch_until_finished(&workflow.id, client_args).await
}

pub async fn watch(args: &WorkflowIdArgs) -> anyhow::Result<()> {
    watch_until_finished(&args.id, &args.client).await
}

async fn watch_until_finished(id: &str, client_args: &ClientArgs) -> anyhow::Result<()> {
    let mut previous: Option<Workflow> = None;
    let mut cut_since: Option<Instant> = None;
    loop {
        let outcome = watch_once(id, client_args, &mut previous).await;
        match outcome {
            Ok(()) => break,
            Err(status)
                if matches!(status.code(), Code::Unavailable | Code::Unknown)
                    && cut_since.get_or_insert_with(Instant::now).elapsed() < REWATCH_PATIENCE =>
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(status) => return Err(status_error(status)),
        }
    }
    let finished = previous.context("the watch ended before any state")?;
    if !client_args.json {
        print!("{}", workflow_text(&finished));
    }
    if finished.state() != WorkflowState::Completed {
        anyhow::bail!(
            "workflow {} ended {}",
            finished.id,
            workflow_state_name(finished.state())
        );
    }
    Ok(())
}

/// One watch stream: prints each state not seen yet; Ok once the workflow finished.
async fn watch_once(
    id: &str,
    client_args: &ClientArgs,
    previous: &mut Option<Workflow>,
) -> Result<(), tonic::Status> {
    let mut client = connect(client_args)
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let mut events = client
        .watch_workflow(WatchWorkflowRequest { id: id.to_string() })
        .await?
        .into_inner();
    while let Some(event) = events.message().await? {
        let Some(workflow) = event.workflow else {
            continue;
        };
        if previous
            .as_ref()
            .is_some_and(|seen| seen.version >= workflow.version)
        {
            continue;
        }
        if client_args.json {
            println!("{}", workflow_json(&workflow));
        } else {
            for line in changes(previous.as_ref(), &workflow) {
                println!("{line}");
            }
        }
        let finished = workflow_is_terminal(&workflow);
        *previous = Some(workflow);
        if finished {
            return Ok(());
        }
    }
    if previous.as_ref().is_some_and(workflow_is_terminal) {
        Ok(())
    } else {
        Err(tonic::Status::unavailable("the watch ended early"))
    }
}

pub async fn get(args: &WorkflowIdArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    let request = GetWorkflowRequest {
        id: args.id.clone(),
    };
    print_reply(client.get_workflow(request).await, args.client.json)
}

pub async fn cancel(args: &WorkflowIdArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    let request = CancelWorkflowRequest {
        id: args.id.clone(),
    };
    print_reply(client.cancel_workflow(request).await, args.client.json)
}

/// Prints the workflow a `get` or `cancel` answered with.
fn print_reply(
    reply: Result<tonic::Response<Workflow>, tonic::Status>,
    as_json: bool,
) -> anyhow::Result<()> {
    let workflow = reply.map_err(status_error)?.into_inner();
    print_workflow(&workflow, as_json);
    Ok(())
}

pub async fn list(args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(args).await?;
    let workflows = client
        .list_workflows(ListWorkflowsRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .workflows;
    if args.json {
        let listed: Vec<Value> = workflows.iter().map(workflow_json).collect();
        println!("{}", Value::Array(listed));
        return Ok(());
    }
    for workflow in &workflows {
        let completed = workflow
            .steps
            .iter()
            .filter(|step| step.state() == StepState::Completed)
            .count();
        println!(
            "{}  {}  {}  {completed}/{} steps completed",
            workflow.id,
            workflow_state_name(workflow.state()),
            workflow.name,
            workflow.steps.len()
        );
    }
    Ok(())
}

fn print_workflow(workflow: &Workflow, as_json: bool) {
    if as_json {
        println!("{}", workflow_json(workflow));
    } else {
        print!("{}", workflow_text(workflow));
    }
}

/// One line per step whose state or attempt changed since `previous`.
fn changes(previous: Option<&Workflow>, current: &Workflow) -> Vec<String> {
    let mut lines = Vec::new();
    for (position, step) in current.steps.iter().enumerate() {
        let before = previous.and_then(|workflow| workflow.steps.get(position));
        let changed = before
            .is_none_or(|before| before.state != step.state || before.attempts != step.attempts);
        if changed && step.state() != StepState::Pending {
            lines.push(step_line(step));
        }
    }
    let state_changed = previous.is_none_or(|workflow| workflow.state != current.state);
    if state_changed {
        lines.push(format!(
            "workflow {}: {}",
            current.id,
            workflow_state_name(current.state())
        ));
    }
    lines
}

fn step_line(step: &Step) -> String {
    let step_spec = spec(step);
    let mut line = format!(
        "  {} [{}] {}",
        step_spec.id,
        role_name(step_spec.role()),
        step_state_name(step.state())
    );
    if step.attempts > 0 {
        line.push_str(&format!(" (attempt {})", step.attempts));
    }
    if !step.error.is_empty() {
        line.push_str(&format!(": {}", step.error));
    }
    line
}

fn workflow_text(workflow: &Workflow) -> String {
    let mut text = format!(
        "{} {} — {}\n",
        workflow.id,
        workflow.name,
        workflow_state_name(workflow.state())
    );
    for step in &workflow.steps {
        text.push_str(&step_line(step));
        text.push('\n');
    }
    if let Some(last) = workflow
        .steps
        .iter()
        .rev()
        .find(|step| step.state() == StepState::Completed && !step.result.is_empty())
    {
        text.push_str(&format!(
            "result of {}:\n{}\n",
            spec(last).id,
            pretty_result(&last.result)
        ));
    }
    text
}

fn pretty_result(result: &str) -> String {
    match serde_json::from_str::<Value>(result) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_else(|_| result.to_string()),
        Err(_) => result.to_string(),
    }
}

pub fn workflow_json(workflow: &Workflow) -> Value {
    let steps: Vec<Value> = workflow
        .steps
        .iter()
        .map(|step| {
            let step_spec = spec(step);
            let result = serde_json::from_str::<Value>(&step.result)
                .unwrap_or_else(|_| Value::String(step.result.clone()));
            json!({
                "id": step_spec.id,
                "role": role_name(step_spec.role()),
                "description": step_spec.description,
                "input": step_spec.input,
                "depends_on": step_spec.depends_on,
                "priority": step_spec.priority,
                "timeout_ms": step_spec.timeout_ms,
                "max_retries": step_spec.max_retries,
                "state": step_state_name(step.state()),
                "attempts": step.attempts,
                "started_at_unix_ms": step.started_at_unix_ms,
                "finished_at_unix_ms": step.finished_at_unix_ms,
                "retry_at_unix_ms": step.retry_at_unix_ms,
                "error": step.error,
                "result": result,
            })
        })
        .collect();
    json!({
        "id": workflow.id,
        "name": workflow.name,
        "description": workflow.description,
        "state": workflow_state_name(workflow.state()),
        "version": workflow.version,
        "created_at_unix_ms": workflow.created_at_unix_ms,
        "finished_at_unix_ms": workflow.finished_at_unix_ms,
        "steps": steps,
    })
}
