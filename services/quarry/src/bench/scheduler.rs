//! `quarry bench scheduler`: the scheduler's own overhead. One elected scheduler replica (in
//! this process, its state in etcd, every step written before it starts and when it ends)
//! runs `workflows` workflows of `steps` no-op steps each, submitted at once, each a layered
//! DAG 10 steps wide where a step depends on two steps of the layer before. Reports steps per
//! second from the first submit to the last workflow's completion.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::try_join_all;
use futures::StreamExt;
use quarry_kit::config::QuarryConfig;
use quarry_proto::v1::{AgentRole, StepSpec, SubmitWorkflowRequest, WorkflowState};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::local_etcd::LocalEtcd;
use crate::cli::SchedulerBenchArgs;

const LAYER_WIDTH: usize = 10;

fn layered_workflow(name: String, steps: usize) -> SubmitWorkflowRequest {
    let id = |position: usize| format!("s{position}");
    let specs = (0..steps)
        .map(|position| {
            let depends_on = if position < LAYER_WIDTH {
                Vec::new()
            } else {
                let layer_start = position - position % LAYER_WIDTH - LAYER_WIDTH;
                let column = position % LAYER_WIDTH;
                let mut depends_on = vec![id(layer_start + column)];
                let neighbour = layer_start + (column + 1) % LAYER_WIDTH;
                if neighbour != layer_start + column {
                    depends_on.push(id(neighbour));
                }
                depends_on
            };
            StepSpec {
                id: id(position),
                role: AgentRole::Noop as i32,
                depends_on,
                ..StepSpec::default()
            }
        })
        .collect();
    SubmitWorkflowRequest {
        name,
        description: "benchmark".to_string(),
        steps: specs,
    }
}

pub async fn run_scheduler(
    args: &SchedulerBenchArgs,
    mut config: QuarryConfig,
) -> anyhow::Result<Value> {
    let local = if args.etcd.is_empty() {
        Some(LocalEtcd::start()?)
    } else {
        None
    };
    let endpoints = match &local {
        Some(etcd) => vec![etcd.endpoint.clone()],
        None => args.etcd.clone(),
    };
    config.discovery.etcd = endpoints.clone();
    config.cluster = format!("bench-{}", std::process::id());
    config.scheduler.max_steps = config.scheduler.max_steps.max(args.steps);
    let shutdown = CancellationToken::new();
    let node = quarry_scheduler::start_node(&config, "http://127.0.0.1:1", None, shutdown.clone())
        .await
        .context("starting the scheduler")?;
    anyhow::ensure!(
        node.wait_until_leading(Duration::from_secs(20)).await,
        "the scheduler was not elected within 20 s"
    );
    let started = Instant::now();
    let submitted = try_join_all((0..args.workflows).map(|number| {
        let node = &node;
        async move {
            node.submit(layered_workflow(format!("bench-{number}"), args.steps))
                .await
        }
    }))
    .await?;
    let finished = try_join_all(submitted.iter().map(|workflow| {
        let node = &node;
        async move {
            let mut states = node.watch(workflow.id.clone()).await?;
            let mut last = None;
            while let Some(state) = states.next().await {
                last = Some(state.map_err(quarry_scheduler::SchedulerError::Forwarded)?);
            }
            last.ok_or_else(|| quarry_scheduler::SchedulerError::Internal("no state".to_string()))
        }
    }))
    .await?;
    let elapsed = started.elapsed();
    shutdown.cancel();
    // Let the replica resign (revoke its lease) before a local etcd is stopped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let completed = finished
        .iter()
        .filter(|workflow| workflow.state() == WorkflowState::Completed)
        .count();
    anyhow::ensure!(
        completed == args.workflows,
        "{} of {} workflows completed",
        completed,
        args.workflows
    );
    let total_steps = args.workflows * args.steps;
    let writes: u64 = finished.iter().map(|workflow| workflow.version).sum();
    Ok(json!({
        "benchmark": "scheduler",
        "etcd": if local.is_some() { "local, started by the benchmark".to_string() } else { endpoints.join(",") },
        "workflows": args.workflows,
        "steps_per_workflow": args.steps,
        "steps": total_steps,
        "dag": format!("layers of {LAYER_WIDTH}, each step depending on two of the layer before"),
        "max_running_steps": config.scheduler.max_running_steps,
        "max_running_per_role": config.scheduler.max_running_per_role,
        "seconds": elapsed.as_secs_f64(),
        "steps_per_s": total_steps as f64 / elapsed.as_secs_f64(),
        "durable_workflow_writes": writes,
        "steps_per_durable_write": total_steps as f64 / writes.max(1) as f64,
    }))
}
