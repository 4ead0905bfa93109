//! `quarry bench beir`: starts an in-process cluster per shard count, ingests a BEIR corpus
//! through the gateway, runs every judged query in each mode, and reports nDCG@10,
//! recall@100, ingest and query rates, latency percentiles, and whether the top 10 of every
//! query is the same whatever the shard count.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context};
use quarry_kit::config::QuarryConfig;
use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{AskRequest, Fusion, SearchMode, SearchRequest};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tracing::info;

use super::dataset::Dataset;
use super::metrics::{ndcg_at_k, percentile, recall_at_k};
use super::BenchCluster;

/// Queries run untimed before each measured pass.
const WARM_UP_QUERIES: usize = 10;

/// One retrieval setting to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub mode: SearchMode,
    pub fusion: Fusion,
}

impl Setting {
    pub fn name(&self) -> String {
        let mode = match self.mode {
            SearchMode::Keyword => "keyword",
            SearchMode::Semantic => "semantic",
            SearchMode::Hybrid | SearchMode::Unspecified => "hybrid",
        };
        match (self.mode, self.fusion) {
            (SearchMode::Hybrid, Fusion::Rrf) => format!("{mode}-rrf"),
            (SearchMode::Hybrid, Fusion::Weighted) => format!("{mode}-weighted"),
            (SearchMode::Hybrid, Fusion::Unspecified) => format!("{mode}-default-fusion"),
            _ => mode.to_string(),
        }
    }
}

pub struct BeirOptions {
    pub dataset: Dataset,
    pub shard_counts: Vec<u32>,
    pub settings: Vec<Setting>,
    pub config: QuarryConfig,
    /// Asks timed per shard count (0: none).
    pub asks: usize,
}

/// The top 10 of every query, per setting, for the shard-invariance check.
type TopTens = BTreeMap<String, BTreeMap<String, Vec<(String, f64)>>>;

pub async fn run_beir(options: BeirOptions) -> anyhow::Result<Value> {
    let dataset = &options.dataset;
    let mut results = Vec::new();
    let mut top_tens_by_shards: Vec<(u32, TopTens)> = Vec::new();
    for &shards in &options.shard_counts {
        let BenchCluster {
            cluster,
            mut client,
            data_dir: _data_dir,
        } = BenchCluster::start(&options.config, shards).await?;

        let started = Instant::now();
        let summary = client
            .ingest(tokio_stream::iter(dataset.corpus.clone()))
            .await
            .context("ingest")?
            .into_inner();
        let ingest_seconds = started.elapsed().as_secs_f64();
        if summary.rejected > 0 {
            let first = summary
                .errors
                .first()
                .map(|error| error.message.clone())
                .unwrap_or_default();
            bail!(
                "{} documents were rejected; first: {first}",
                summary.rejected
            );
        }
        let ingest_docs_per_s = summary.accepted as f64 / ingest_seconds;
        info!(
            shards,
            docs = summary.accepted,
            seconds = ingest_seconds,
            "corpus ingested"
        );

        let mut top_tens = TopTens::new();
        for setting in &options.settings {
            let measured = measure(&mut client, dataset, *setting).await?;
            top_tens.insert(setting.name(), measured.top_tens);
            results.push(json!({
                "dataset": dataset.name,
                "shards": shards,
                "setting": setting.name(),
                "queries": dataset.queries.len(),
                "docs": summary.accepted,
                "ndcg_at_10": round4(measured.ndcg_at_10),
                "recall_at_100": round4(measured.recall_at_100),
                "ingest_docs_per_s": round1(ingest_docs_per_s),
                "ingest_seconds": round1(ingest_seconds),
                "queries_per_s": round1(measured.queries_per_s),
                "latency_ms": {
                    "k10": { "p50": round2(measured.k10_p50), "p99": round2(measured.k10_p99) },
                    "k100": { "p50": round2(measured.k100_p50), "p99": round2(measured.k100_p99) },
                },
            }));
            info!(
                shards,
                setting = setting.name(),
                ndcg = measured.ndcg_at_10,
                "setting measured"
            );
        }
        if options.asks > 0 {
            let asked = measure_asks(&mut client, dataset, options.asks).await?;
            results.push(json!({
                "dataset": dataset.name,
                "shards": shards,
                "setting": "ask",
                "asks": options.asks,
                "latency_ms": asked,
            }));
        }
        top_tens_by_shards.push((shards, top_tens));
        drop(client);
        cluster.stop().await?;
    }
    Ok(json!({
        "results": results,
        "shard_invariance": compare_top_tens(&top_tens_by_shards),
    }))
}

struct Measured {
    ndcg_at_10: f64,
    recall_at_100: f64,
    queries_per_s: f64,
    k10_p50: f64,
    k10_p99: f64,
    k100_p50: f64,
    k100_p99: f64,
    top_tens: BTreeMap<String, Vec<(String, f64)>>,
}

async fn measure(
    client: &mut QuarryClient<Channel>,
    dataset: &Dataset,
    setting: Setting,
) -> anyhow::Result<Measured> {
    let request = |text: &str, k: u32| SearchRequest {
        query: text.to_string(),
        k,
        mode: setting.mode as i32,
        fusion: setting.fusion as i32,
        ..SearchRequest::default()
    };
    for query in dataset.queries.iter().take(WARM_UP_QUERIES) {
        client.search(request(&query.text, 100)).await?;
    }
    let mut ndcg = 0.0;
    let mut recall = 0.0;
    let mut k100_latencies = Vec::with_capacity(dataset.queries.len());
    let mut top_tens = BTreeMap::new();
    let pass_started = Instant::now();
    for query in &dataset.queries {
        let started = Instant::now();
        let response = client
            .search(request(&query.text, 100))
            .await
            .with_context(|| format!("query {}", query.id))?
            .into_inner();
        k100_latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        let ranked: Vec<String> = response.hits.iter().map(|hit| hit.doc_id.clone()).collect();
        let judgements = &dataset.qrels[&query.id];
        ndcg += ndcg_at_k(&ranked, judgements, 10);
        recall += recall_at_k(&ranked, judgements, 100);
        let top: Vec<(String, f64)> = response
            .hits
            .iter()
            .take(10)
            .map(|hit| (hit.doc_id.clone(), hit.score))
            .collect();
        top_tens.insert(query.id.clone(), top);
    }
    let queries_per_s = dataset.queries.len() as f64 / pass_started.elapsed().as_secs_f64();
    let mut k10_latencies = Vec::with_capacity(dataset.queries.len());
    for query in &dataset.queries {
        let started = Instant::now();
        client.search(request(&query.text, 10)).await?;
        k10_latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let count = dataset.queries.len().max(1) as f64;
    Ok(Measured {
        ndcg_at_10: ndcg / count,
        recall_at_100: recall / count,
        queries_per_s,
        k10_p50: percentile(&k10_latencies, 50.0),
        k10_p99: percentile(&k10_latencies, 99.0),
        k100_p50: percentile(&k100_latencies, 50.0),
        k100_p99: percentile(&k100_latencies, 99.0),
        top_tens,
    })
}

/// Latency of `asks` Asks (the dataset's queries as questions, in turn; default mode, k and
/// generator), with the median of each stage the gateway timed.
async fn measure_asks(
    client: &mut QuarryClient<Channel>,
    dataset: &Dataset,
    asks: usize,
) -> anyhow::Result<Value> {
    let questions: Vec<&str> = dataset
        .queries
        .iter()
        .map(|query| query.text.as_str())
        .cycle()
        .take(asks + WARM_UP_QUERIES)
        .collect();
    let mut latencies = Vec::with_capacity(asks);
    let mut stages: [Vec<f64>; 4] = Default::default();
    for (index, question) in questions.into_iter().enumerate() {
        let started = Instant::now();
        let response = client
            .ask(AskRequest {
                question: question.to_string(),
                ..AskRequest::default()
            })
            .await
            .with_context(|| format!("ask {question:?}"))?
            .into_inner();
        if index < WARM_UP_QUERIES {
            continue;
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        let timings = response
            .retrieval
            .and_then(|retrieval| retrieval.timings)
            .unwrap_or_default();
        for (stage, value) in stages.iter_mut().zip([
            timings.analyze_ms,
            timings.search_ms,
            timings.generate_ms,
            timings.evaluate_ms,
        ]) {
            stage.push(value);
        }
    }
    Ok(json!({
        "p50": round2(percentile(&latencies, 50.0)),
        "p99": round2(percentile(&latencies, 99.0)),
        "stage_p50": {
            "analyze": round2(percentile(&stages[0], 50.0)),
            "search": round2(percentile(&stages[1], 50.0)),
            "generate": round2(percentile(&stages[2], 50.0)),
            "evaluate": round2(percentile(&stages[3], 50.0)),
        },
    }))
}

/// For each setting, compares every shard count's top 10s with the first shard count's.
fn compare_top_tens(by_shards: &[(u32, TopTens)]) -> Vec<Value> {
    let Some((base_shards, base)) = by_shards.first() else {
        return Vec::new();
    };
    let mut comparisons = Vec::new();
    for (shards, other) in by_shards.iter().skip(1) {
        for (setting, base_queries) in base {
            let Some(other_queries) = other.get(setting) else {
                continue;
            };
            let mut identical = 0;
            let mut max_score_difference: f64 = 0.0;
            for (query_id, base_top) in base_queries {
                let Some(other_top) = other_queries.get(query_id) else {
                    continue;
                };
                let same_ids = base_top.len() == other_top.len()
                    && base_top
                        .iter()
                        .zip(other_top)
                        .all(|(left, right)| left.0 == right.0);
                if same_ids {
                    identical += 1;
                    for (left, right) in base_top.iter().zip(other_top) {
                        max_score_difference = max_score_difference.max((left.1 - right.1).abs());
                    }
                }
            }
            comparisons.push(json!({
                "setting": setting,
                "shards": [base_shards, shards],
                "queries": base_queries.len(),
                "identical_top10": identical,
                "max_score_difference": max_score_difference,
            }));
        }
    }
    comparisons
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn round4(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}
