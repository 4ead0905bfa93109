//! `quarry bench tail`: steady keyword queries from one client against an in-process
//! cluster of 2 shards × 2 replicas, where replica 0 of shard 0 is slowed by 200 ms on 5% of
//! its requests (fault injection), with hedging off and on, under adaptive and round-robin
//! replica selection; prints p50 / p99 / p99.9, the extra request rate and failures.

use std::time::Instant;

use anyhow::Context;
use quarry_kit::config::{EncoderKind, QuarryConfig, ReplicaSelection};
use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{SearchMode, SearchRequest};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::dataset::Dataset;
use super::metrics::percentile;
use crate::up::LocalCluster;

/// Shard calls per keyword query: statistics and search, on each of 2 shards.
const SHARD_CALLS_PER_QUERY: f64 = 4.0;
const SLOW_DELAY_MS: u64 = 200;
const SLOW_RATE: f64 = 0.05;
/// Queries run before measuring, so the latency windows hold enough samples.
const WARM_UP_QUERIES: usize = 200;

pub async fn run_tail(
    dataset: &Dataset,
    queries: usize,
    base: QuarryConfig,
) -> anyhow::Result<Value> {
    let mut runs = Vec::new();
    for selection in [ReplicaSelection::Adaptive, ReplicaSelection::RoundRobin] {
        for hedging in [false, true] {
            let mut config = base.clone();
            let data_dir = tempfile::tempdir().context("temporary data directory")?;
            config.data_dir = data_dir.path().to_path_buf();
            config.listen = "127.0.0.1:0".to_string();
            config.shards = 2;
            config.replicas = 2;
            // Keyword queries only: the tail comes from replica choice, not from the encoder.
            config.analyzer.encoder = EncoderKind::None;
            config.gateway.hedging = hedging;
            config.gateway.replica_selection = selection;
            config.retriever.fault.shard = 0;
            config.retriever.fault.replica = 0;
            config.retriever.fault.delay_ms = SLOW_DELAY_MS;
            config.retriever.fault.rate = SLOW_RATE;
            let cluster = LocalCluster::start(&config, CancellationToken::new()).await?;
            let channel = Channel::from_shared(cluster.gateway_address.clone())?
                .connect()
                .await?;
            let mut client =
                QuarryClient::new(channel).max_encoding_message_size(256 * 1024 * 1024);
            client
                .ingest(tokio_stream::iter(dataset.corpus.clone()))
                .await
                .context("ingest")?;
            let measured = measure(&mut client, dataset, queries).await;
            drop(client);
            cluster.stop().await?;
            let selection_name = match selection {
                ReplicaSelection::Adaptive => "adaptive",
                ReplicaSelection::RoundRobin => "round_robin",
            };
            runs.push(json!({
                "replica_selection": selection_name,
                "hedging": hedging,
                "queries": queries,
                "p50_ms": round2(measured.p50),
                "p99_ms": round2(measured.p99),
                "p999_ms": round2(measured.p999),
                "p99_over_p50": round2(measured.p99 / measured.p50.max(1e-9)),
                "extra_request_rate": (measured.hedges as f64 / (SHARD_CALLS_PER_QUERY * queries as f64) * 10_000.0).round() / 10_000.0,
                "failures": measured.failures,
            }));
        }
    }
    Ok(json!({
        "setup": {
            "shards": 2, "replicas": 2, "mode": "keyword", "k": 10, "clients": 1,
            "slow_replica": "shard 0 replica 0", "slow_delay_ms": SLOW_DELAY_MS, "slow_rate": SLOW_RATE,
            "docs": dataset.corpus.len(),
        },
        "runs": runs,
    }))
}

struct Measured {
    p50: f64,
    p99: f64,
    p999: f64,
    hedges: u64,
    failures: u64,
}

async fn measure(
    client: &mut QuarryClient<Channel>,
    dataset: &Dataset,
    queries: usize,
) -> Measured {
    let texts: Vec<&str> = dataset
        .queries
        .iter()
        .map(|query| query.text.as_str())
        .collect();
    let request = |index: usize| SearchRequest {
        query: texts[index % texts.len()].to_string(),
        k: 10,
        mode: SearchMode::Keyword as i32,
        fusion: 0,
        ..SearchRequest::default()
    };
    for index in 0..WARM_UP_QUERIES {
        let _ = client.search(request(index)).await;
    }
    let mut latencies = Vec::with_capacity(queries);
    let mut hedges = 0u64;
    let mut failures = 0u64;
    for index in 0..queries {
        let started = Instant::now();
        match client.search(request(index)).await {
            Ok(response) => {
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                hedges += u64::from(response.into_inner().hedges);
            }
            Err(_) => failures += 1,
        }
    }
    Measured {
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        p999: percentile(&latencies, 99.9),
        hedges,
        failures,
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
