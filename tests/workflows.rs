//! Workflows across processes: `quarry serve scheduler` replicas with a real etcd (the `test`
//! agent role enabled by config), and a full `research_and_write` on `quarry up` over an
//! ingested corpus. DAG and priority order, failure cascades, retries with backoff, timeouts,
//! cancel, bad input, and a leader killed with kill -9 mid-workflow.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use quarry_proto::v1::scheduler_client::SchedulerClient;
use quarry_proto::v1::{
    AgentRole, CancelWorkflowRequest, GetWorkflowRequest, StepSpec, StepState,
    SubmitWorkflowRequest, WatchWorkflowRequest, Workflow, WorkflowState,
};
use support::etcd::Etcd;
use support::{corpus, quarry_command, QuarryUp, Served};
use tonic::transport::Channel;
use tonic::Code;

const CLUSTER: &str = "wf";
/// The lease TTL every test process gets (support's test environment).
const LEASE_TTL: Duration = Duration::from_secs(3);

/// etcd, a data directory shared by the scheduler replicas (the test agent's run log), and
/// the replicas.
struct Schedulers {
    _etcd: Etcd,
    data: tempfile::TempDir,
    replicas: Vec<Served>,
}

impl Schedulers {
    async fn start(replicas: usize, max_running_steps: usize) -> Self {
        let etcd = Etcd::with_cluster(CLUSTER, 1);
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("quarry.toml");
        std::fs::write(
            &config,
            format!(
                "[scheduler]\ntest_roles = true\nbackoff_ms = 100\nmax_backoff_ms = 2000\nmax_running_steps = {max_running_steps}\n"
            ),
        )
        .unwrap();
        let mut schedulers = Self {
            _etcd: etcd,
            data,
            replicas: Vec::new(),
        };
        for _ in 0..replicas {
            schedulers.add_replica().await;
        }
        schedulers
    }

    async fn add_replica(&mut self) {
        let args = vec![
            "--etcd".to_string(),
            self._etcd.endpoint.clone(),
            "--cluster".to_string(),
            CLUSTER.to_string(),
            "--data-dir".to_string(),
            self.data.path().display().to_string(),
            "--config".to_string(),
            self.data.path().join("quarry.toml").display().to_string(),
        ];
        self.replicas.push(Served::start("scheduler", &args).await);
    }

    async fn client(&self, replica: usize) -> SchedulerClient<Channel> {
        let channel = Channel::from_shared(self.replicas[replica].address.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        SchedulerClient::new(channel)
    }

    fn runs(&self) -> Vec<RecordedRun> {
        recorded_runs(self.data.path())
    }
}

/// One line of the test agent's run log.
#[derive(Debug, Clone)]
struct RecordedRun {
    workflow: String,
    step: String,
    attempt: u32,
}

fn recorded_runs(data_dir: &Path) -> Vec<RecordedRun> {
    let text =
        std::fs::read_to_string(data_dir.join("scheduler-test-runs.log")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(RecordedRun {
                workflow: fields.first()?.to_string(),
                step: fields.get(1)?.to_string(),
                attempt: fields.get(2)?.parse().ok()?,
            })
        })
        .collect()
}

fn test_step(id: &str, depends_on: &[&str], directive: serde_json::Value) -> StepSpec {
    StepSpec {
        id: id.to_string(),
        role: AgentRole::Test as i32,
        description: format!("test step {id}"),
        input: directive.to_string(),
        depends_on: depends_on.iter().map(|id| id.to_string()).collect(),
        priority: 0,
        timeout_ms: 0,
        max_retries: 0,
    }
}

fn workflow_request(name: &str, steps: Vec<StepSpec>) -> SubmitWorkflowRequest {
    SubmitWorkflowRequest {
        name: name.to_string(),
        description: String::new(),
        steps,
    }
}

/// Submits, retrying while no leader is elected yet.
async fn submit(client: &mut SchedulerClient<Channel>, request: SubmitWorkflowRequest) -> Workflow {
    let started = Instant::now();
    loop {
        match client.submit(request.clone()).await {
            Ok(response) => return response.into_inner(),
            Err(status)
                if status.code() == Code::Unavailable
                    && started.elapsed() < Duration::from_secs(20) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("submit failed: {status:?}"),
        }
    }
}

/// Every state the Watch stream sends, until the workflow finishes.
async fn watch_to_end(client: &mut SchedulerClient<Channel>, id: &str) -> Vec<Workflow> {
    let mut events = client
        .watch(WatchWorkflowRequest { id: id.to_string() })
        .await
        .unwrap()
        .into_inner();
    let mut states = Vec::new();
    while let Some(event) = events.message().await.unwrap() {
        states.push(event.workflow.unwrap());
    }
    states
}

fn step<'a>(workflow: &'a Workflow, id: &str) -> &'a quarry_proto::v1::Step {
    workflow
        .steps
        .iter()
        .find(|step| step.spec.as_ref().unwrap().id == id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn steps_run_in_dependency_order_then_by_priority() {
    // One step at a time, so that the start order is exactly the scheduler's choice.
    let schedulers = Schedulers::start(1, 1).await;
    let mut client = schedulers.client(0).await;
    let sleep = serde_json::json!({ "sleep_ms": 30 });
    let mut low = test_step("low", &[], sleep.clone());
    low.priority = 0;
    let mut high = test_step("high", &[], sleep.clone());
    high.priority = 5;
    let mut middle = test_step("middle", &[], sleep.clone());
    middle.priority = 1;
    let mut urgent_but_blocked = test_step("after-low", &["low"], sleep.clone());
    urgent_but_blocked.priority = 100;
    let equal_first = test_step("equal-a", &[], sleep.clone());
    let equal_second = test_step("equal-b", &[], sleep.clone());
    let request = workflow_request(
        "order",
        vec![
            low,
            high,
            middle,
            urgent_but_blocked,
            equal_first,
            equal_second,
        ],
    );
    let submitted = submit(&mut client, request).await;
    assert_eq!(submitted.state(), WorkflowState::Running);
    let states = watch_to_end(&mut client, &submitted.id).await;
    let first = states.first().unwrap();
    assert_eq!(first.id, submitted.id, "the current state comes first");
    let finished = states.last().unwrap();
    assert_eq!(finished.state(), WorkflowState::Completed, "{finished:?}");
    let versions: Vec<u64> = states.iter().map(|state| state.version).collect();
    // Every durable version, none missed: each write adds one.
    assert!(
        versions.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{versions:?}"
    );
    let mut order: Vec<(i64, String)> = finished
        .steps
        .iter()
        .map(|step| {
            (
                step.started_at_unix_ms,
                step.spec.as_ref().unwrap().id.clone(),
            )
        })
        .collect();
    order.sort();
    let order: Vec<&str> = order.iter().map(|(_, id)| id.as_str()).collect();
    // Priority first (high 5, middle 1), then submission order among equals (low, equal-a,
    // equal-b); after-low (priority 100) only once low completed, and then before anything else.
    assert_eq!(
        order,
        ["high", "middle", "low", "after-low", "equal-a", "equal-b"]
    );
    assert!(
        step(finished, "after-low").started_at_unix_ms >= step(finished, "low").finished_at_unix_ms
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_step_cancels_its_dependents_but_not_independent_branches() {
    let schedulers = Schedulers::start(1, 8).await;
    let mut client = schedulers.client(0).await;
    let request = workflow_request(
        "cascade",
        vec![
            test_step("bad", &[], serde_json::json!({ "fail_times": 9 })),
            test_step("child", &["bad"], serde_json::json!({ "record": true })),
            test_step(
                "grandchild",
                &["child"],
                serde_json::json!({ "record": true }),
            ),
            test_step("other", &[], serde_json::json!({ "sleep_ms": 300 })),
            test_step("after-other", &["other"], serde_json::json!({})),
        ],
    );
    let submitted = submit(&mut client, request).await;
    let finished = watch_to_end(&mut client, &submitted.id)
        .await
        .pop()
        .unwrap();
    assert_eq!(finished.state(), WorkflowState::Failed);
    assert_eq!(step(&finished, "bad").state(), StepState::Failed);
    assert!(step(&finished, "bad").error.contains("failing on purpose"));
    assert_eq!(step(&finished, "child").state(), StepState::Cancelled);
    assert!(step(&finished, "child").error.contains("\"bad\" failed"));
    assert_eq!(step(&finished, "grandchild").state(), StepState::Cancelled);
    assert_eq!(step(&finished, "other").state(), StepState::Completed);
    assert_eq!(step(&finished, "after-other").state(), StepState::Completed);
    assert!(schedulers.runs().is_empty(), "cancelled steps never ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_step_is_retried_with_backoff_then_succeeds() {
    let schedulers = Schedulers::start(1, 8).await;
    let mut client = schedulers.client(0).await;
    let mut flaky = test_step(
        "flaky",
        &[],
        serde_json::json!({ "fail_times": 2, "record": true }),
    );
    flaky.max_retries = 3;
    let submitted = submit(&mut client, workflow_request("retry", vec![flaky])).await;
    let states = watch_to_end(&mut client, &submitted.id).await;
    let finished = states.last().unwrap();
    assert_eq!(finished.state(), WorkflowState::Completed);
    let flaky = step(finished, "flaky");
    assert_eq!(flaky.attempts, 3);
    assert_eq!(flaky.result, "flaky done on attempt 3");
    // Each attempt's start as the watch saw it: backoff 100 ms, then 200 ms.
    let mut started_at: BTreeMap<u32, i64> = BTreeMap::new();
    for state in &states {
        // A step keeps its attempt's start time until the next attempt starts.
        let flaky = step(state, "flaky");
        if flaky.attempts > 0 {
            started_at.insert(flaky.attempts, flaky.started_at_unix_ms);
        }
    }
    assert!(started_at[&2] - started_at[&1] >= 100, "{started_at:?}");
    assert!(started_at[&3] - started_at[&2] >= 200, "{started_at:?}");
    let attempts: Vec<u32> = schedulers.runs().iter().map(|run| run.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_outlives_its_timeout_is_cancelled_and_retried() {
    let schedulers = Schedulers::start(1, 8).await;
    let mut client = schedulers.client(0).await;
    let mut slow = test_step("slow", &[], serde_json::json!({ "sleep_ms": 20_000 }));
    slow.timeout_ms = 300;
    slow.max_retries = 1;
    let started = Instant::now();
    let submitted = submit(&mut client, workflow_request("timeout", vec![slow])).await;
    let finished = watch_to_end(&mut client, &submitted.id)
        .await
        .pop()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(finished.state(), WorkflowState::Failed);
    let slow = step(&finished, "slow");
    assert_eq!(slow.state(), StepState::Failed);
    assert_eq!(slow.attempts, 2, "timed out, retried once, timed out again");
    assert!(
        slow.error.contains("timed out after 300 ms"),
        "{}",
        slow.error
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_running_steps_and_cancels_the_rest() {
    let schedulers = Schedulers::start(1, 8).await;
    let mut client = schedulers.client(0).await;
    let request = workflow_request(
        "cancel",
        vec![
            test_step("long", &[], serde_json::json!({ "sleep_ms": 30_000 })),
            test_step("next", &["long"], serde_json::json!({ "record": true })),
        ],
    );
    let submitted = submit(&mut client, request).await;
    let started = Instant::now();
    loop {
        let now = client
            .get(GetWorkflowRequest {
                id: submitted.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if step(&now, "long").state() == StepState::Running {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = client
        .cancel(CancelWorkflowRequest {
            id: submitted.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state(), WorkflowState::Cancelled);
    assert!(cancelled
        .steps
        .iter()
        .all(|step| step.state() == StepState::Cancelled));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the running step was stopped"
    );
    let watched = watch_to_end(&mut client, &submitted.id).await;
    assert_eq!(
        watched.len(),
        1,
        "a finished workflow's watch is its final state"
    );
    assert_eq!(watched[0].state(), WorkflowState::Cancelled);
    assert!(schedulers.runs().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_submissions_are_refused_naming_the_step() {
    let schedulers = Schedulers::start(1, 8).await;
    let mut client = schedulers.client(0).await;
    // Wait for the leader with a valid workflow first.
    submit(
        &mut client,
        workflow_request("ok", vec![test_step("a", &[], serde_json::json!({}))]),
    )
    .await;
    let mut cases: Vec<(SubmitWorkflowRequest, &str)> = vec![
        (
            workflow_request("w", vec![test_step("a", &["ghost"], serde_json::json!({}))]),
            "step \"a\": unknown dependency \"ghost\"",
        ),
        (
            workflow_request(
                "w",
                vec![
                    test_step("a", &["b"], serde_json::json!({})),
                    test_step("b", &["a"], serde_json::json!({})),
                ],
            ),
            "cycle",
        ),
        (
            workflow_request(
                "w",
                vec![
                    test_step("a", &[], serde_json::json!({})),
                    test_step("a", &[], serde_json::json!({})),
                ],
            ),
            "step \"a\": duplicate step id",
        ),
        (workflow_request("w", vec![]), "steps must not be empty"),
    ];
    let mut unknown_role = test_step("r", &[], serde_json::json!({}));
    unknown_role.role = 99;
    cases.push((
        workflow_request("w", vec![unknown_role]),
        "step \"r\": unknown role 99",
    ));
    let mut too_slow = test_step("t", &[], serde_json::json!({}));
    too_slow.timeout_ms = u32::MAX;
    cases.push((
        workflow_request("w", vec![too_slow]),
        "step \"t\": timeout_ms",
    ));
    for (request, expected) in cases {
        let error = client.submit(request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
        assert!(error.message().contains(expected), "{expected}: {error:?}");
    }
    let error = client
        .get(GetWorkflowRequest {
            id: "wf-none".to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = client
        .cancel(CancelWorkflowRequest { id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standby_takes_over_after_kill_9_without_rerunning_completed_steps() {
    let mut schedulers = Schedulers::start(1, 8).await;
    let mut first = schedulers.client(0).await;
    // The first replica leads once it accepts a workflow; then a standby joins.
    submit(
        &mut first,
        workflow_request("warm-up", vec![test_step("a", &[], serde_json::json!({}))]),
    )
    .await;
    schedulers.add_replica().await;
    let mut standby = schedulers.client(1).await;
    let directive = serde_json::json!({ "sleep_ms": 400, "record": true });
    let steps = vec![
        test_step("s1", &[], directive.clone()),
        test_step("s2", &["s1"], directive.clone()),
        test_step("s3", &["s2"], directive.clone()),
        test_step("s4", &["s3"], directive.clone()),
        test_step("s5", &["s4"], directive.clone()),
        test_step(
            "side",
            &[],
            serde_json::json!({ "sleep_ms": 100, "record": true }),
        ),
    ];
    // Submitted to the standby: it forwards to the leader.
    let submitted = submit(&mut standby, workflow_request("takeover", steps)).await;
    assert_eq!(submitted.steps.len(), 6);
    let before_kill = loop {
        let now = standby
            .get(GetWorkflowRequest {
                id: submitted.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let completed = now
            .steps
            .iter()
            .filter(|step| step.state() == StepState::Completed)
            .count();
        // s3 is running, and its agent has started (recorded its run).
        let s3_started = schedulers
            .runs()
            .iter()
            .any(|run| run.workflow == submitted.id && run.step == "s3");
        if completed >= 3 && step(&now, "s3").state() == StepState::Running && s3_started {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    schedulers.replicas[0].kill();
    let killed_at = Instant::now();
    // What the dead leader wrote last.
    let last_written = standby
        .get(GetWorkflowRequest {
            id: submitted.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let takeover = loop {
        let now = standby
            .get(GetWorkflowRequest {
                id: submitted.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if now.version > last_written.version {
            break killed_at.elapsed();
        }
        assert!(killed_at.elapsed() < Duration::from_secs(20), "no takeover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("takeover after kill -9: {takeover:?} (lease TTL {LEASE_TTL:?})");
    assert!(
        takeover <= LEASE_TTL + Duration::from_secs(2),
        "takeover took {takeover:?}"
    );
    let finished = watch_to_end(&mut standby, &submitted.id)
        .await
        .pop()
        .unwrap();
    assert_eq!(finished.state(), WorkflowState::Completed, "{finished:?}");
    let runs: Vec<RecordedRun> = schedulers
        .runs()
        .into_iter()
        .filter(|run| run.workflow == submitted.id)
        .collect();
    let mut runs_per_step: HashMap<String, usize> = HashMap::new();
    for run in &runs {
        *runs_per_step.entry(run.step.clone()).or_insert(0) += 1;
    }
    for completed in before_kill
        .steps
        .iter()
        .filter(|step| step.state() == StepState::Completed)
    {
        let id = &completed.spec.as_ref().unwrap().id;
        assert_eq!(
            runs_per_step[id], 1,
            "{id} completed before the kill and ran again: {runs:?}"
        );
        assert_eq!(step(&finished, id).attempts, 1);
    }
    // The step that was running is run again, its interrupted attempt counted.
    assert_eq!(runs_per_step["s3"], 2, "{runs:?}");
    assert_eq!(step(&finished, "s3").attempts, 2);
    for id in ["s4", "s5"] {
        assert_eq!(runs_per_step[id], 1, "{runs:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn research_and_write_produces_a_reviewed_draft_citing_the_corpus() {
    let data_dir = tempfile::tempdir().unwrap();
    let quarry = QuarryUp::start(data_dir.path(), 2).await;
    let mut client = quarry.client().await;
    let summary = client
        .ingest(tokio_stream::iter(corpus()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.accepted, corpus().len() as u64);
    let output = quarry_command(&[
        "workflow",
        "run",
        "research-and-write",
        "--topic",
        "how the Moon causes ocean tides",
        "--style",
        "concise",
        "--audience",
        "students",
        "--addr",
        &quarry.address,
        "--json",
    ]);
    let last_line = output.lines().last().expect("watch output");
    let finished: serde_json::Value = serde_json::from_str(last_line).unwrap();
    assert_eq!(finished["state"], "completed", "{output}");
    let steps = finished["steps"].as_array().unwrap();
    let by_id = |id: &str| steps.iter().find(|step| step["id"] == id).unwrap().clone();
    let research = by_id("research");
    let sources: Vec<String> = research["result"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|source| source["doc_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sources.first().map(String::as_str),
        Some("tides"),
        "{research}"
    );
    let edit = by_id("edit");
    let draft = edit["result"]["text"].as_str().unwrap();
    assert!(draft.contains("Sources:"), "{draft}");
    let cited: Vec<&str> = edit["result"]["cited"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    assert!(
        cited.contains(&"tides"),
        "the draft cites the ingested document: {draft}"
    );
    let ingested: Vec<String> = corpus().into_iter().map(|document| document.id).collect();
    assert!(cited
        .iter()
        .all(|id| ingested.iter().any(|known| known == id)));
    let review = by_id("review");
    assert_eq!(review["state"], "completed");
    assert!(review["result"]["verdict"].is_string(), "{review}");
    assert!(
        review["result"]["groundedness"].as_f64().unwrap() > 0.0,
        "{review}"
    );
    assert!(review["result"]["cited"]
        .as_array()
        .unwrap()
        .iter()
        .any(|id| id == "tides"));
    // A YAML workflow file through the CLI: two branches gathered by a coordinator.
    let file = data_dir.path().join("brief.yaml");
    std::fs::write(
        &file,
        "name: brief\nsteps:\n  - {id: tides, role: researcher, input: ocean tides and the Moon}\n  - {id: ask, role: specialist, input: Who discovered penicillin?, priority: 5}\n  - id: gather\n    role: coordinator\n    depends_on: [tides, ask]\n    input: {purpose: brief}\n",
    )
    .unwrap();
    let output = quarry_command(&[
        "workflow",
        "submit",
        file.to_str().unwrap(),
        "--watch",
        "--addr",
        &quarry.address,
        "--json",
    ]);
    let brief: serde_json::Value = serde_json::from_str(output.lines().last().unwrap()).unwrap();
    assert_eq!(brief["state"], "completed", "{output}");
    let gather = brief["steps"][2]["result"].clone();
    assert_eq!(gather["input"], "{\"purpose\":\"brief\"}");
    assert_eq!(
        gather["results"]["tides"]["sources"][0]["doc_id"], "tides",
        "{gather}"
    );
    assert!(
        gather["results"]["ask"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|id| id == "penicillin"),
        "{gather}"
    );
    // Get through the gateway returns the same finished workflow.
    let id = finished["id"].as_str().unwrap();
    let again = quarry_command(&["workflow", "get", id, "--addr", &quarry.address, "--json"]);
    let again: serde_json::Value = serde_json::from_str(again.trim()).unwrap();
    assert_eq!(again["state"], "completed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gracefully_stopped_leader_hands_over_at_once() {
    let mut schedulers = Schedulers::start(1, 8).await;
    let mut first = schedulers.client(0).await;
    let warm_up = workflow_request("warm-up", vec![test_step("a", &[], serde_json::json!({}))]);
    submit(&mut first, warm_up.clone()).await;
    schedulers.add_replica().await;
    let mut standby = schedulers.client(1).await;
    let request = workflow_request(
        "handover",
        vec![
            test_step("long", &[], serde_json::json!({ "sleep_ms": 1500 })),
            test_step("after", &["long"], serde_json::json!({})),
        ],
    );
    let submitted = submit(&mut standby, request).await;
    let stopping = Instant::now();
    assert!(schedulers.replicas[0].stop().success());
    // Only the standby is left: a submit it answers means it leads.
    submit(&mut standby, warm_up).await;
    let handover = stopping.elapsed();
    eprintln!("handover after SIGTERM: {handover:?}");
    assert!(
        handover < LEASE_TTL / 2,
        "the leader resigned, so no lease had to expire: {handover:?}"
    );
    let finished = watch_to_end(&mut standby, &submitted.id)
        .await
        .pop()
        .unwrap();
    assert_eq!(finished.state(), WorkflowState::Completed);
    assert_eq!(
        step(&finished, "long").attempts,
        2,
        "interrupted by the stop, run again"
    );
}
