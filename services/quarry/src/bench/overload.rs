//! `quarry bench overload`: what an overloaded gateway does. An in-process cluster indexes
//! part of a BEIR corpus; then, for Asks with a 3 s deadline:
//!
//! 1. *unloaded* — one client at a time: the latency baseline;
//! 2. *capacity* — as many clients as the ask class admits, closed loop: answers per second;
//! 3. *overload* — an open loop offering `factor` × capacity for `seconds`: how fast the
//!    admitted calls still are, how fast the refused ones are told, and resident memory;
//! 4. *recovery* — one client again the moment the load stops: how long until latency is
//!    back at the baseline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use quarry_kit::config::QuarryConfig;
use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{AskRequest, SearchMode};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::Code;

use super::dataset::Dataset;
use super::metrics::percentile;
use super::BenchCluster;

pub struct OverloadOptions {
    pub dataset: Dataset,
    pub config: QuarryConfig,
    pub seconds: f64,
    pub factor: f64,
    pub deadline: Duration,
}

/// Channels the load is spread over (one HTTP/2 connection caps its concurrent streams).
const CONNECTIONS: usize = 8;

/// How one offered call ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Answered,
    Refused,
    DeadlineExceeded,
    Failed,
}

struct Call {
    outcome: Outcome,
    seconds: f64,
}

fn request(question: &str, deadline: Duration) -> tonic::Request<AskRequest> {
    let mut request = tonic::Request::new(AskRequest {
        question: question.to_string(),
        k: 0,
        mode: SearchMode::Hybrid as i32,
        // The overload is of fresh answers: the cache would answer repeats for free.
        skip_cache: true,
        ..AskRequest::default()
    });
    request.set_timeout(deadline);
    request
}

async fn ask(client: &mut QuarryClient<Channel>, question: &str, deadline: Duration) -> Call {
    let started = Instant::now();
    let outcome = match client.ask(request(question, deadline)).await {
        Ok(_) => Outcome::Answered,
        Err(status) if status.code() == Code::ResourceExhausted => Outcome::Refused,
        Err(status) if status.code() == Code::DeadlineExceeded => Outcome::DeadlineExceeded,
        Err(status) if status.code() == Code::Cancelled => Outcome::DeadlineExceeded,
        Err(_) => Outcome::Failed,
    };
    Call {
        outcome,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The overload phase's calls, by outcome.
#[derive(Default)]
struct Tally {
    admitted: Vec<f64>,
    refused: Vec<f64>,
    expired: usize,
    failed: usize,
}

impl Tally {
    fn add(&mut self, call: Call) {
        match call.outcome {
            Outcome::Answered => self.admitted.push(call.seconds),
            Outcome::Refused => self.refused.push(call.seconds),
            Outcome::DeadlineExceeded => self.expired += 1,
            Outcome::Failed => self.failed += 1,
        }
    }
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn millis(seconds: f64) -> f64 {
    (seconds * 1e5).round() / 100.0
}

pub async fn run_overload(options: OverloadOptions) -> anyhow::Result<Value> {
    let OverloadOptions {
        dataset,
        config,
        seconds,
        factor,
        deadline,
    } = options;
    let ask_limit = config.admission.limits()[1];
    let bench = BenchCluster::start(&config, 1).await?;
    let mut client = bench.client.clone();
    let summary = client
        .ingest(tokio_stream::iter(dataset.corpus.clone()))
        .await
        .context("ingest")?
        .into_inner();
    let questions: Arc<Vec<String>> = Arc::new(
        dataset
            .queries
            .iter()
            .map(|query| query.text.clone())
            .collect(),
    );
    anyhow::ensure!(!questions.is_empty(), "the dataset has no queries");
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            Channel::from_shared(bench.cluster.gateway_address.clone())?
                .connect()
                .await?,
        );
    }

    // 1. Unloaded: one at a time (after a warm-up).
    for question in questions.iter().take(20) {
        ask(&mut client, question, deadline).await;
    }
    let mut unloaded = Vec::new();
    let started = Instant::now();
    for question in questions.iter().cycle() {
        let call = ask(&mut client, question, deadline).await;
        anyhow::ensure!(
            call.outcome == Outcome::Answered,
            "an unloaded Ask failed: {:?}",
            call.outcome
        );
        unloaded.push(call.seconds);
        if unloaded.len() >= 200 || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let unloaded_p50 = percentile(&unloaded, 50.0);
    let unloaded_p99 = percentile(&unloaded, 99.0);

    // 2. Capacity: the class's limit of clients, closed loop, 5 s.
    let window = Duration::from_secs(5);
    let mut workers = JoinSet::new();
    for worker in 0..ask_limit {
        let mut client = QuarryClient::new(channels[worker % CONNECTIONS].clone());
        let questions = Arc::clone(&questions);
        workers.spawn(async move {
            let started = Instant::now();
            let mut answered = 0usize;
            let mut index = worker;
            while started.elapsed() < window {
                let call = ask(&mut client, &questions[index % questions.len()], deadline).await;
                answered += usize::from(call.outcome == Outcome::Answered);
                index += ask_limit;
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(count) = workers.join_next().await {
        answered += count?;
    }
    let capacity = answered as f64 / window.as_secs_f64();
    anyhow::ensure!(capacity > 0.0, "no Ask was answered at capacity");

    // 3. Overload: an open loop at factor × capacity.
    let offered_rate = factor * capacity;
    let interval = Duration::from_secs_f64(1.0 / offered_rate);
    let resident_before = resident_bytes();
    let mut resident_peak = resident_before;
    let mut calls = JoinSet::new();
    let mut tally = Tally::default();
    let load_started = Instant::now();
    let load_window = Duration::from_secs_f64(seconds);
    let mut next = load_started;
    let mut sent = 0usize;
    let mut last_sample = Instant::now();
    while load_started.elapsed() < load_window {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        let mut client = QuarryClient::new(channels[sent % CONNECTIONS].clone());
        let question = questions[sent % questions.len()].clone();
        calls.spawn(async move { ask(&mut client, &question, deadline).await });
        sent += 1;
        while let Some(call) = calls.try_join_next() {
            tally.add(call?);
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            resident_peak = resident_peak.max(resident_bytes());
            last_sample = Instant::now();
        }
    }
    let load_stopped = Instant::now();

    // 4. Recovery: one client the moment the load stops, alongside the calls still out.
    let mut recovery = Vec::new();
    let mut recovered_after = None;
    let mut index = 0;
    while load_stopped.elapsed() < Duration::from_secs(10) {
        let call = ask(&mut client, &questions[index % questions.len()], deadline).await;
        index += 1;
        let at = load_stopped.elapsed().as_secs_f64();
        recovery.push((at, call.seconds, call.outcome));
        let last: Vec<f64> = recovery
            .iter()
            .rev()
            .take(5)
            .map(|(_, seconds, _)| *seconds)
            .collect();
        if recovered_after.is_none()
            && last.len() == 5
            && recovery
                .iter()
                .rev()
                .take(5)
                .all(|(_, _, outcome)| *outcome == Outcome::Answered)
            && percentile(&last, 50.0) <= 1.2 * unloaded_p50
        {
            // Back at the baseline from the first of those five.
            recovered_after = Some(recovery[recovery.len() - 5].0 - recovery[recovery.len() - 5].1);
        }
        if recovered_after.is_some() && load_stopped.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    while let Some(call) = calls.join_next().await {
        tally.add(call?);
    }
    let Tally {
        admitted,
        refused,
        expired,
        failed,
    } = tally;
    resident_peak = resident_peak.max(resident_bytes());
    bench.cluster.stop().await?;

    let admitted_p99 = percentile(&admitted, 99.0);
    let refused_p99 = percentile(&refused, 99.0);
    let memory_growth = resident_peak as f64 / resident_before.max(1) as f64 - 1.0;
    let ratio = admitted_p99 / unloaded_p99;
    Ok(json!({
        "benchmark": "overload",
        "dataset": dataset.name,
        "documents": summary.accepted,
        "rpc": "Ask (hybrid, default k), one shard, in-process cluster",
        "ask_limit": ask_limit,
        "client_deadline_ms": deadline.as_millis() as u64,
        "unloaded": {
            "asks": unloaded.len(),
            "p50_ms": millis(unloaded_p50),
            "p99_ms": millis(unloaded_p99),
        },
        "capacity_asks_per_s": (capacity * 10.0).round() / 10.0,
        "overload": {
            "seconds": seconds,
            "factor": factor,
            "offered_per_s": (offered_rate * 10.0).round() / 10.0,
            "offered": sent,
            "answered": admitted.len(),
            "refused": refused.len(),
            "deadline_exceeded": expired,
            "failed": failed,
            "answered_per_s": (admitted.len() as f64 / seconds * 10.0).round() / 10.0,
            "admitted_p50_ms": millis(percentile(&admitted, 50.0)),
            "admitted_p99_ms": millis(admitted_p99),
            "refused_p50_ms": millis(percentile(&refused, 50.0)),
            "refused_p99_ms": millis(refused_p99),
            "resident_mib_before": resident_before / (1 << 20),
            "resident_mib_peak": resident_peak / (1 << 20),
        },
        "recovery": {
            "asks": recovery.len(),
            "recovered_after_s": recovered_after.map(|seconds| (seconds * 100.0).round() / 100.0),
        },
        "targets": {
            "admitted_p99_over_unloaded_p99": { "value": (ratio * 100.0).round() / 100.0, "target": "<= 1.5", "met": ratio <= 1.5 },
            "refused_p99_ms": { "value": millis(refused_p99), "target": "<= 5", "met": refused_p99 <= 0.005 },
            "resident_memory_growth": { "value": (memory_growth * 1000.0).round() / 1000.0, "target": "< 0.20", "met": memory_growth < 0.20 },
            "recovered_within_s": { "value": recovered_after, "target": "<= 5", "met": recovered_after.is_some_and(|seconds| seconds <= 5.0) },
        },
    }))
}
