//! `quarry bench tracing`: query throughput with tracing off against tracing on (every
//! span exported over OTLP to a receiver in this process). Tracing is process-wide, so each
//! setting is its own `quarry up` child process (2 shards, keyword retrieval, so that the
//! spans' cost is as large a share of a query as it gets); both hold the same corpus, and
//! timed windows of concurrent `Search` and `Ask` calls alternate between them. Prints the
//! median rate of each setting, the overhead (one minus the median of each round's on/off
//! ratio, which cancels most background load), and the spans exported, dropped, received.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use quarry_kit::telemetry::otlp_receiver::OtlpReceiver;
use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{AskRequest, ClusterStatusRequest, SearchMode, SearchRequest};
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::dataset::Dataset;

/// How the benchmark runs.
pub struct TracingBenchOptions {
    pub window: Duration,
    pub concurrency: usize,
    pub rounds: usize,
}

/// One `quarry up` child.
struct Cluster {
    child: Child,
    gateway: String,
    metrics: String,
    _data: tempfile::TempDir,
}

impl Cluster {
    async fn start(otlp_endpoint: Option<&str>) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let port = free_port()?;
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data.path())
            .args(["--shards", "2", "--metrics-addr", &metrics])
            .env("RUST_LOG", "warn")
            .env("QUARRY_ANALYZER__ENCODER", "none")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(endpoint) = otlp_endpoint {
            command.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        }
        let child = command.spawn().context("starting quarry up")?;
        let cluster = Self {
            child,
            gateway: format!("http://127.0.0.1:{port}"),
            metrics,
            _data: data,
        };
        cluster.wait_until_serving().await?;
        Ok(cluster)
    }

    async fn wait_until_serving(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Ok(mut client) = self.client().await {
                if client.cluster_status(ClusterStatusRequest {}).await.is_ok() {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "quarry up did not serve"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn client(&self) -> anyhow::Result<QuarryClient<Channel>> {
        let channel = Channel::from_shared(self.gateway.clone())?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(QuarryClient::new(channel).max_encoding_message_size(256 * 1024 * 1024))
    }

    /// A counter's value from the child's `/metrics`.
    async fn counter(&self, name: &str) -> anyhow::Result<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Search,
    Ask,
}

/// Calls completed per second by `concurrency` clients over `window`.
async fn throughput(
    cluster: &Cluster,
    call: Call,
    queries: &Arc<Vec<String>>,
    options: &TracingBenchOptions,
) -> anyhow::Result<f64> {
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + options.window;
    let mut workers = Vec::new();
    for worker in 0..options.concurrency {
        let mut client = cluster.client().await?;
        let queries = Arc::clone(queries);
        let completed = Arc::clone(&completed);
        let failed = Arc::clone(&failed);
        workers.push(tokio::spawn(async move {
            let mut index = worker * 7919;
            while Instant::now() < deadline {
                let text = queries[index % queries.len()].clone();
                index += 1;
                let outcome = match call {
                    Call::Search => client
                        .search(SearchRequest {
                            query: text,
                            k: 10,
                            mode: SearchMode::Keyword as i32,
                            fusion: 0,
                            ..SearchRequest::default()
                        })
                        .await
                        .map(|_| ()),
                    Call::Ask => client
                        .ask(AskRequest {
                            question: text,
                            // The pipeline's tracing cost, not the cache's.
                            skip_cache: true,
                            ..AskRequest::default()
                        })
                        .await
                        .map(|_| ()),
                };
                let counter = if outcome.is_ok() { &completed } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        failed.load(Ordering::Relaxed) == 0,
        "{} calls failed",
        failed.load(Ordering::Relaxed)
    );
    Ok(completed.load(Ordering::Relaxed) as f64 / elapsed)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

pub async fn run_tracing(dataset: &Dataset, options: TracingBenchOptions) -> anyhow::Result<Value> {
    let receiver = OtlpReceiver::start(false).await?;
    let off = Cluster::start(None).await?;
    let on = Cluster::start(Some(&receiver.endpoint())).await?;
    for cluster in [&off, &on] {
        cluster
            .client()
            .await?
            .ingest(tokio_stream::iter(dataset.corpus.clone()))
            .await
            .context("ingest")?;
    }
    let queries: Arc<Vec<String>> = Arc::new(
        dataset
            .queries
            .iter()
            .map(|query| query.text.clone())
            .collect(),
    );
    let mut calls = Vec::new();
    for call in [Call::Search, Call::Ask] {
        // One short window each to warm caches and connections.
        let warm_up = TracingBenchOptions {
            window: Duration::from_secs(1),
            ..options
        };
        throughput(&off, call, &queries, &warm_up).await?;
        throughput(&on, call, &queries, &warm_up).await?;
        let spans_before = receiver.count();
        let (mut rates_off, mut rates_on) = (Vec::new(), Vec::new());
        for round in 0..options.rounds {
            // Adjacent windows see the same background load; the order alternates so that
            // neither setting always goes first.
            if round % 2 == 0 {
                rates_off.push(throughput(&off, call, &queries, &options).await?);
                rates_on.push(throughput(&on, call, &queries, &options).await?);
            } else {
                rates_on.push(throughput(&on, call, &queries, &options).await?);
                rates_off.push(throughput(&off, call, &queries, &options).await?);
            }
        }
        let spans = receiver.count() - spans_before;
        let measured_on: f64 = rates_on.iter().sum::<f64>() * options.window.as_secs_f64();
        let mut ratios: Vec<f64> = rates_on
            .iter()
            .zip(&rates_off)
            .map(|(on_rate, off_rate)| on_rate / off_rate)
            .collect();
        let median_ratio = median(&mut ratios);
        let (median_off, median_on) = (
            median(&mut rates_off.clone()),
            median(&mut rates_on.clone()),
        );
        calls.push(json!({
            "call": if call == Call::Search { "Search (keyword, k=10)" } else { "Ask (keyword retrieval, extractive)" },
            "per_second_off": rates_off.iter().map(|rate| round1(*rate)).collect::<Vec<_>>(),
            "per_second_on": rates_on.iter().map(|rate| round1(*rate)).collect::<Vec<_>>(),
            "median_per_second_off": round1(median_off),
            "median_per_second_on": round1(median_on),
            "overhead_percent": round1((1.0 - median_ratio) * 100.0),
            "overhead_of_medians_percent": round1((1.0 - median_on / median_off) * 100.0),
            "spans_received": spans,
            "spans_per_call": round1(spans as f64 / measured_on.max(1.0)),
        }));
    }
    // Let the last batches arrive before reading the exporter's counters.
    tokio::time::sleep(Duration::from_secs(6)).await;
    Ok(json!({
        "setup": {
            "cluster": "quarry up, 2 shards, 1 replica, one process per setting",
            "encoder": "none (keyword retrieval: the cheapest query, so the largest share for spans)",
            "docs": dataset.corpus.len(),
            "clients": options.concurrency,
            "window_s": options.window.as_secs_f64(),
            "rounds": options.rounds,
            "exporter": "OTLP/gRPC to an in-process receiver, default OTEL_BSP_* settings",
        },
        "calls": calls,
        "spans_exported": on.counter("quarry_trace_spans_exported_total").await?,
        "spans_dropped": on.counter("quarry_trace_spans_dropped_total").await?,
        "spans_received": receiver.count(),
        "export_failures": on.counter("quarry_trace_export_failures_total").await?,
    }))
}
