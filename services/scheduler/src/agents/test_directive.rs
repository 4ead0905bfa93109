//! The `test` role, enabled only by `scheduler.test_roles = true`: its input is a JSON
//! directive {"sleep_ms", "fail_times", "record", "result"}. It sleeps, fails while its
//! attempt is at most `fail_times`, and with `record` appends "workflow step attempt pid" to
//! `<data_dir>/scheduler-test-runs.log` when it starts, so tests can count how often a step
//! ran, and in which process.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{AgentError, StepContext};

/// Where recorded runs go, under the data directory.
pub const RUN_LOG: &str = "scheduler-test-runs.log";

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Directive {
    sleep_ms: u64,
    fail_times: u32,
    record: bool,
    result: String,
}

pub async fn run(context: &StepContext, data_dir: &Path) -> Result<String, AgentError> {
    let directive: Directive = if context.input.trim().is_empty() {
        Directive::default()
    } else {
        serde_json::from_str(&context.input)
            .map_err(|error| AgentError::Input(format!("test directive: {error}")))?
    };
    if directive.record {
        record_run(context, data_dir)
            .map_err(|error| AgentError::Failed(format!("recording the run: {error}")))?;
    }
    if directive.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(directive.sleep_ms)).await;
    }
    if context.attempt <= directive.fail_times {
        return Err(AgentError::Failed(format!(
            "failing on purpose: attempt {} of {} planned failures",
            context.attempt, directive.fail_times
        )));
    }
    Ok(if directive.result.is_empty() {
        format!("{} done on attempt {}", context.step_id, context.attempt)
    } else {
        directive.result
    })
}

fn record_run(context: &StepContext, data_dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join(RUN_LOG))?;
    // One write of the whole line: appends from concurrent steps and processes never interleave.
    let line = format!(
        "{} {} {} {}\n",
        context.workflow_id,
        context.step_id,
        context.attempt,
        std::process::id()
    );
    log.write_all(line.as_bytes())?;
    log.sync_data()
}
