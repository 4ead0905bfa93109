//! The engine of one leadership term: a single task owns every unfinished workflow, applies
//! commands (submit, cancel, get, list, watch) and the outcomes of attempts, starts ready
//! steps under the caps, and writes every changed workflow to the store *before* it starts
//! the steps those changes mark running and before anyone is told. Outcomes that arrive
//! together are written together, which is what makes durable state cheap.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use quarry_proto::v1::{StepState, SubmitWorkflowRequest, Workflow};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agents::Agents;
use crate::attempt::{Attempt, Finished};
use crate::dag::{self, Outcome, RetryPolicy};
use crate::dispatch::{pick_steps, Candidate, Caps};
use crate::error::SchedulerError;
use crate::model::{new_workflow, new_workflow_id, now_unix_ms, spec, workflow_is_terminal};
use crate::store::WorkflowStore;
use crate::validate::{validate_submission, Limits};

/// Largest stored state of one workflow: it must fit one etcd value (1.5 MiB by default);
/// a result that would outgrow it fails its attempt instead of every later write.
const MAX_STORED_WORKFLOW_BYTES: usize = 1024 * 1024;

/// How the engine schedules (from `[scheduler]`).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub caps: Caps,
    pub retry: RetryPolicy,
    pub default_timeout_ms: u32,
    pub limits: Limits,
}

type Reply<T> = oneshot::Sender<Result<T, SchedulerError>>;

enum Command {
    Submit(SubmitWorkflowRequest, Reply<Workflow>),
    Cancel(String, Reply<Workflow>),
    Get(String, Reply<Workflow>),
    List(Reply<Vec<Workflow>>),
    Watch(String, Reply<mpsc::UnboundedReceiver<Workflow>>),
}

/// One unfinished workflow in memory.
struct Run {
    workflow: Workflow,
    /// Submission order, for starting equal priorities in order.
    sequence: u64,
    /// Running attempts by step position, each with the token that stops it.
    running: HashMap<usize, CancellationToken>,
    watchers: Vec<mpsc::UnboundedSender<Workflow>>,
}

/// Talks to a running engine; fails with UNAVAILABLE once the engine stopped.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    stopped: CancellationToken,
}

fn engine_gone() -> SchedulerError {
    SchedulerError::Unavailable("this scheduler stopped leading; retry".to_string())
}

impl EngineHandle {
    async fn call<T>(
        &self,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, SchedulerError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| engine_gone())?;
        answer.await.map_err(|_| engine_gone())?
    }

    pub async fn submit(&self, request: SubmitWorkflowRequest) -> Result<Workflow, SchedulerError> {
        self.call(|reply| Command::Submit(request, reply)).await
    }

    pub async fn cancel(&self, id: String) -> Result<Workflow, SchedulerError> {
        self.call(|reply| Command::Cancel(id, reply)).await
    }

    pub async fn get(&self, id: String) -> Result<Workflow, SchedulerError> {
        self.call(|reply| Command::Get(id, reply)).await
    }

    pub async fn list(&self) -> Result<Vec<Workflow>, SchedulerError> {
        self.call(Command::List).await
    }

    /// The workflow now, then every durable change, until it finishes (the channel closes).
    pub async fn watch(
        &self,
        id: String,
    ) -> Result<mpsc::UnboundedReceiver<Workflow>, SchedulerError> {
        self.call(|reply| Command::Watch(id, reply)).await
    }

    /// Completes once the engine has stopped (its term ended or its store failed).
    pub async fn stopped(&self) {
        self.stopped.cancelled().await
    }
}

pub struct Engine {
    runs: HashMap<String, Run>,
    next_sequence: u64,
    store: Arc<dyn WorkflowStore>,
    agents: Arc<Agents>,
    settings: EngineSettings,
    finished_sender: mpsc::UnboundedSender<Finished>,
    finished: mpsc::UnboundedReceiver<Finished>,
    /// Workflows changed since the last write.
    dirty: HashSet<String>,
    /// Answers owed once the current changes are written.
    owed: Vec<(String, Reply<Workflow>)>,
    stop: CancellationToken,
}

impl Engine {
    /// Loads every unfinished workflow from the store, resumes them (running steps are
    /// retried, completed ones kept) and starts the engine's task; it runs until `stop`.
    pub async fn start(
        store: Arc<dyn WorkflowStore>,
        agents: Arc<Agents>,
        settings: EngineSettings,
        stop: CancellationToken,
    ) -> Result<EngineHandle, SchedulerError> {
        let mut unfinished: Vec<Workflow> = store
            .list()
            .await?
            .into_iter()
            .filter(|workflow| !workflow_is_terminal(workflow))
            .collect();
        unfinished.sort_by(|left, right| {
            (left.created_at_unix_ms, &left.id).cmp(&(right.created_at_unix_ms, &right.id))
        });
        let (finished_sender, finished) = mpsc::unbounded_channel();
        let mut engine = Self {
            runs: HashMap::new(),
            next_sequence: 0,
            store,
            agents,
            settings,
            finished_sender,
            finished,
            dirty: HashSet::new(),
            owed: Vec::new(),
            stop: stop.clone(),
        };
        let now = now_unix_ms();
        for mut workflow in unfinished {
            dag::resume(&mut workflow, now);
            info!(
                workflow = workflow.id,
                name = workflow.name,
                "resuming workflow"
            );
            engine.insert(workflow);
        }
        let (commands, receiver) = mpsc::channel(1024);
        let stopped = CancellationToken::new();
        tokio::spawn(engine.run(receiver, stopped.clone()));
        Ok(EngineHandle { commands, stopped })
    }

    fn insert(&mut self, workflow: Workflow) {
        let id = workflow.id.clone();
        self.dirty.insert(id.clone());
        self.runs.insert(
            id,
            Run {
                workflow,
                sequence: self.next_sequence,
                running: HashMap::new(),
                watchers: Vec::new(),
            },
        );
        self.next_sequence += 1;
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>, stopped: CancellationToken) {
        loop {
            if let Err(error) = self.settle().await {
                warn!(error = %error, "workflow state could not be written; stopping this term");
                break;
            }
            let wake = self.next_retry_in();
            tokio::select! {
                _ = self.stop.cancelled() => break,
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                Some(finished) = self.finished.recv() => self.apply(finished),
                _ = tokio::time::sleep(wake.unwrap_or(Duration::ZERO)), if wake.is_some() => {}
            }
            // Take everything already waiting, so that it is written in one go.
            for _ in 0..10_000 {
                match self.finished.try_recv() {
                    Ok(finished) => self.apply(finished),
                    Err(_) => break,
                }
            }
            for _ in 0..1_000 {
                match commands.try_recv() {
                    Ok(command) => self.handle(command).await,
                    Err(_) => break,
                }
            }
        }
        self.stop.cancel();
        for run in self.runs.values() {
            for token in run.running.values() {
                token.cancel();
            }
        }
        info!(workflows = self.runs.len(), "engine stopped");
        stopped.cancel();
    }

    /// How long until the earliest backoff ends, if a step waits for one.
    fn next_retry_in(&self) -> Option<Duration> {
        let now = now_unix_ms();
        self.runs
            .values()
            .flat_map(|run| run.workflow.steps.iter())
            .filter(|step| step.state() == StepState::Ready && step.retry_at_unix_ms > now)
            .map(|step| step.retry_at_unix_ms)
            .min()
            .map(|at| Duration::from_millis((at - now).max(1) as u64))
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Submit(request, reply) => {
                if let Err(error) = validate_submission(&request, &self.settings.limits) {
                    let _ = reply.send(Err(error));
                    return;
                }
                let mut workflow = new_workflow(new_workflow_id(), request);
                dag::advance(&mut workflow, now_unix_ms());
                info!(
                    workflow = workflow.id,
                    name = workflow.name,
                    steps = workflow.steps.len(),
                    "workflow submitted"
                );
                self.owed.push((workflow.id.clone(), reply));
                self.insert(workflow);
            }
            Command::Cancel(id, reply) => {
                let Some(run) = self.runs.get_mut(&id) else {
                    // Not in memory: finished already (or unknown).
                    let _ = reply.send(self.stored(&id).await);
                    return;
                };
                for position in dag::cancel_workflow(&mut run.workflow, now_unix_ms()) {
                    if let Some(token) = run.running.remove(&position) {
                        token.cancel();
                    }
                }
                info!(workflow = id, "workflow cancelled");
                self.dirty.insert(id.clone());
                self.owed.push((id, reply));
            }
            Command::Get(id, reply) => {
                let answer = match self.runs.get(&id) {
                    Some(run) => Ok(run.workflow.clone()),
                    None => self.stored(&id).await,
                };
                let _ = reply.send(answer);
            }
            Command::List(reply) => {
                let answer = self.store.list().await.map(|stored| {
                    stored
                        .into_iter()
                        .map(|workflow| match self.runs.get(&workflow.id) {
                            Some(run) => run.workflow.clone(),
                            None => workflow,
                        })
                        .collect()
                });
                let _ = reply.send(answer);
            }
            Command::Watch(id, reply) => {
                let (sender, receiver) = mpsc::unbounded_channel();
                match self.runs.get_mut(&id) {
                    Some(run) => {
                        let _ = sender.send(run.workflow.clone());
                        run.watchers.push(sender);
                        let _ = reply.send(Ok(receiver));
                    }
                    None => match self.stored(&id).await {
                        Ok(workflow) => {
                            let _ = sender.send(workflow);
                            let _ = reply.send(Ok(receiver));
                        }
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    },
                }
            }
        }
    }

    async fn stored(&self, id: &str) -> Result<Workflow, SchedulerError> {
        self.store
            .load(id)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(id.to_string()))
    }

    fn apply(&mut self, finished: Finished) {
        let Some(run) = self.runs.get_mut(&finished.workflow_id) else {
            return;
        };
        let outcome = match finished.outcome {
            Outcome::Completed(result)
                if prost::Message::encoded_len(&run.workflow) + result.len()
                    > MAX_STORED_WORKFLOW_BYTES =>
            {
                Outcome::Failed(format!(
                    "a result of {} bytes would make the workflow's state larger than {MAX_STORED_WORKFLOW_BYTES} bytes",
                    result.len()
                ))
            }
            outcome => outcome,
        };
        let failed = matches!(outcome, Outcome::Failed(_));
        let applied = dag::finish_step(
            &mut run.workflow,
            finished.position,
            finished.attempt,
            outcome,
            now_unix_ms(),
            &self.settings.retry,
        );
        if !applied {
            return;
        }
        run.running.remove(&finished.position);
        let step = &run.workflow.steps[finished.position];
        if failed {
            warn!(
                workflow = finished.workflow_id,
                step = spec(step).id,
                attempt = finished.attempt,
                state = step.state().as_str_name(),
                error = step.error,
                "step attempt failed"
            );
        } else {
            debug!(
                workflow = finished.workflow_id,
                step = spec(step).id,
                attempt = finished.attempt,
                "step completed"
            );
        }
        self.dirty.insert(finished.workflow_id);
    }

    /// Starts what may start, writes every change, then answers, publishes and spawns.
    async fn settle(&mut self) -> Result<(), SchedulerError> {
        let now = now_unix_ms();
        let to_start = self.choose_steps(now);
        let mut to_spawn = Vec::with_capacity(to_start.len());
        for (id, position) in to_start {
            let Some(run) = self.runs.get_mut(&id) else {
                continue;
            };
            let attempt = dag::start_step(&mut run.workflow, position, now);
            let token = self.stop.child_token();
            run.running.insert(position, token.clone());
            self.dirty.insert(id.clone());
            to_spawn.push((id, position, attempt, token));
        }
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut snapshots = Vec::with_capacity(self.dirty.len());
        for id in self.dirty.drain() {
            if let Some(run) = self.runs.get_mut(&id) {
                run.workflow.version += 1;
                snapshots.push(run.workflow.clone());
            }
        }
        self.store.save(&snapshots).await?;
        if self.stop.is_cancelled() {
            return Err(SchedulerError::Deposed);
        }
        for (id, reply) in self.owed.drain(..) {
            let answer = self
                .runs
                .get(&id)
                .map(|run| run.workflow.clone())
                .ok_or_else(|| SchedulerError::NotFound(id.clone()));
            let _ = reply.send(answer);
        }
        for snapshot in &snapshots {
            if let Some(run) = self.runs.get_mut(&snapshot.id) {
                run.watchers
                    .retain(|watcher| watcher.send(snapshot.clone()).is_ok());
            }
        }
        for (id, position, attempt, token) in to_spawn {
            if let Some(run) = self.runs.get(&id) {
                let attempt = Attempt::new(
                    &run.workflow,
                    position,
                    attempt,
                    self.settings.default_timeout_ms,
                );
                attempt.spawn(
                    Arc::clone(&self.agents),
                    token,
                    self.finished_sender.clone(),
                );
            }
        }
        self.runs.retain(|id, run| {
            let finished = workflow_is_terminal(&run.workflow);
            if finished {
                info!(
                    workflow = id,
                    state = run.workflow.state().as_str_name(),
                    "workflow finished"
                );
            }
            !finished
        });
        Ok(())
    }

    /// Ready steps to start now, by priority then submission order, under the caps.
    fn choose_steps(&self, now: i64) -> Vec<(String, usize)> {
        let mut candidates = Vec::new();
        let mut ids = HashMap::new();
        let mut running_total = 0;
        let mut running_per_role: HashMap<i32, usize> = HashMap::new();
        for (id, run) in &self.runs {
            running_total += run.running.len();
            for position in run.running.keys() {
                let role = spec(&run.workflow.steps[*position]).role;
                *running_per_role.entry(role).or_insert(0) += 1;
            }
            for position in 0..run.workflow.steps.len() {
                if dag::startable(&run.workflow, position, now) {
                    let step_spec = spec(&run.workflow.steps[position]);
                    candidates.push(Candidate {
                        workflow_sequence: run.sequence,
                        position,
                        priority: step_spec.priority,
                        role: step_spec.role,
                    });
                    ids.insert(run.sequence, id.clone());
                }
            }
        }
        if candidates.is_empty() {
            return Vec::new();
        }
        pick_steps(
            candidates,
            running_total,
            &running_per_role,
            self.settings.caps,
        )
        .into_iter()
        .filter_map(|chosen| {
            ids.get(&chosen.workflow_sequence)
                .map(|id| (id.clone(), chosen.position))
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use quarry_proto::v1::{AgentRole, StepSpec, WorkflowState};

    use super::*;
    use crate::store::FileStore;

    fn settings() -> EngineSettings {
        EngineSettings {
            caps: Caps {
                max_running: 8,
                max_running_per_role: 8,
            },
            retry: RetryPolicy {
                backoff_ms: 10,
                max_backoff_ms: 100,
            },
            default_timeout_ms: 10_000,
            limits: Limits {
                max_steps: 100,
                max_step_timeout_ms: 60_000,
                max_retries: 5,
                test_roles: true,
            },
        }
    }

    fn test_step(id: &str, depends_on: &[&str], directive: &str) -> StepSpec {
        StepSpec {
            id: id.to_string(),
            role: AgentRole::Test as i32,
            input: directive.to_string(),
            depends_on: depends_on.iter().map(|id| id.to_string()).collect(),
            ..StepSpec::default()
        }
    }

    async fn start(directory: &std::path::Path) -> (EngineHandle, CancellationToken) {
        let store = Arc::new(FileStore::open(&directory.join("workflows")).unwrap());
        let agents = Arc::new(Agents::new(None, 1 << 20, true, directory.to_path_buf()));
        let stop = CancellationToken::new();
        let handle = Engine::start(store, agents, settings(), stop.clone())
            .await
            .unwrap();
        (handle, stop)
    }

    async fn last_state(handle: &EngineHandle, id: &str) -> Workflow {
        let mut states = handle.watch(id.to_string()).await.unwrap();
        let mut last = None;
        while let Some(state) = states.recv().await {
            last = Some(state);
        }
        last.unwrap()
    }

    #[tokio::test]
    async fn runs_a_workflow_to_completion_and_stores_every_version() {
        let directory = tempfile::tempdir().unwrap();
        let (handle, _stop) = start(directory.path()).await;
        let submitted = handle
            .submit(SubmitWorkflowRequest {
                name: "w".to_string(),
                description: String::new(),
                steps: vec![
                    StepSpec {
                        max_retries: 1,
                        ..test_step("a", &[], r#"{"fail_times": 1}"#)
                    },
                    test_step("b", &["a"], ""),
                ],
            })
            .await
            .unwrap();
        let finished = last_state(&handle, &submitted.id).await;
        assert_eq!(finished.state(), WorkflowState::Completed);
        assert_eq!(finished.steps[0].attempts, 2);
        assert_eq!(finished.steps[1].result, "b done on attempt 1");
        let stored = handle.get(submitted.id.clone()).await.unwrap();
        assert_eq!(
            stored, finished,
            "a finished workflow is read back from the store"
        );
        let error = handle.get("wf-unknown".to_string()).await.unwrap_err();
        assert!(matches!(error, SchedulerError::NotFound(_)));
    }

    #[tokio::test]
    async fn the_per_role_cap_keeps_steps_of_one_role_apart() {
        let directory = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStore::open(&directory.path().join("workflows")).unwrap());
        let agents = Arc::new(Agents::new(
            None,
            1 << 20,
            true,
            directory.path().to_path_buf(),
        ));
        let mut capped = settings();
        capped.caps.max_running_per_role = 1;
        let handle = Engine::start(store, agents, capped, CancellationToken::new())
            .await
            .unwrap();
        let sleepy = r#"{"sleep_ms": 50}"#;
        let mut noop = test_step("noop", &[], "");
        noop.role = AgentRole::Noop as i32;
        let submitted = handle
            .submit(SubmitWorkflowRequest {
                name: "caps".to_string(),
                description: String::new(),
                steps: vec![
                    test_step("a", &[], sleepy),
                    test_step("b", &[], sleepy),
                    test_step("c", &[], sleepy),
                    noop,
                ],
            })
            .await
            .unwrap();
        let finished = last_state(&handle, &submitted.id).await;
        assert_eq!(finished.state(), WorkflowState::Completed);
        let mut spans: Vec<(i64, i64)> = finished.steps[..3]
            .iter()
            .map(|step| (step.started_at_unix_ms, step.finished_at_unix_ms))
            .collect();
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[1].0 >= pair[0].1, "test steps overlapped: {spans:?}");
        }
        assert!(
            finished.steps[3].finished_at_unix_ms <= spans[1].0,
            "another role is not held back by the test role's cap"
        );
    }

    #[tokio::test]
    async fn a_new_engine_resumes_without_rerunning_completed_steps() {
        let directory = tempfile::tempdir().unwrap();
        let (handle, stop) = start(directory.path()).await;
        let submitted = handle
            .submit(SubmitWorkflowRequest {
                name: "w".to_string(),
                description: String::new(),
                steps: vec![
                    test_step("quick", &[], r#"{"record": true}"#),
                    test_step("slow", &["quick"], r#"{"record": true, "sleep_ms": 200}"#),
                ],
            })
            .await
            .unwrap();
        let mut states = handle.watch(submitted.id.clone()).await.unwrap();
        while let Some(state) = states.recv().await {
            if state.steps[1].state() == StepState::Running {
                break;
            }
        }
        stop.cancel();
        handle.stopped().await;
        let (resumed, _stop) = start(directory.path()).await;
        let finished = last_state(&resumed, &submitted.id).await;
        assert_eq!(finished.state(), WorkflowState::Completed);
        assert_eq!(finished.steps[0].attempts, 1);
        assert_eq!(
            finished.steps[1].attempts, 2,
            "the interrupted attempt counts"
        );
        let log =
            std::fs::read_to_string(directory.path().join("scheduler-test-runs.log")).unwrap();
        let quick_runs = log.lines().filter(|line| line.contains(" quick ")).count();
        assert_eq!(quick_runs, 1, "{log}");
    }
}
