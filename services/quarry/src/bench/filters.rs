//! `quarry bench filters`: what a metadata filter costs, and what the answer cache saves.
//! An in-process cluster indexes a BEIR corpus, each document with synthetic metadata
//! (`group`: one of ten values, so `group=<one>` admits 10% of the corpus; `year`), into a
//! collection. Then:
//!
//! 1. *filtered vs unfiltered* — every query searched hybrid, k = 10, without a filter and
//!    with `group=g3` (10% selectivity), the two interleaved query by query so that drift
//!    of the machine's speed falls on both alike; medians, p99s and their ratio;
//! 2. *cached Ask* — questions asked once (answered fresh, then cached), then again: the
//!    gateway's latency of a cached answer against a fresh one.

use std::time::Instant;

use anyhow::Context;
use quarry_kit::config::QuarryConfig;
use quarry_proto::v1::{
    AskRequest, CreateCollectionRequest, Document, Filter, Fusion, SearchMode, SearchRequest,
};
use serde_json::{json, Value};

use super::dataset::Dataset;
use super::metrics::percentile;
use super::BenchCluster;

pub struct FiltersOptions {
    pub dataset: Dataset,
    pub config: QuarryConfig,
    pub collection: String,
    pub shards: u32,
    pub asks: usize,
}

/// Values of `group`: one of them admits a tenth of the corpus.
const GROUPS: usize = 10;
const K: u32 = 10;
/// Searches before measuring (caches, allocators, page cache).
const WARM_UP: usize = 20;
/// Cached answers asked per question.
const CACHED_REPEATS: usize = 5;

fn with_metadata(mut document: Document, index: usize, collection: &str) -> Document {
    let mut rng = fastrand::Rng::with_seed(index as u64);
    document.metadata_json = json!({
        "group": format!("g{}", index % GROUPS),
        "year": rng.i64(1990..=2024),
    })
    .to_string();
    document.collection = collection.to_string();
    document
}

fn millis(seconds: f64) -> f64 {
    (seconds * 1e5).round() / 100.0
}

fn summary(latencies: &[f64]) -> Value {
    json!({
        "p50_ms": millis(percentile(latencies, 50.0)),
        "p99_ms": millis(percentile(latencies, 99.0)),
        "calls": latencies.len(),
    })
}

pub async fn run_filters(options: FiltersOptions) -> anyhow::Result<Value> {
    let FiltersOptions {
        dataset,
        mut config,
        collection,
        shards,
        asks,
    } = options;
    // The answer cache stays on (phase 2 measures it); phase 1 searches, which it never serves.
    config.cache.enabled = true;
    let mut bench = BenchCluster::start(&config, shards).await?;
    let client = &mut bench.client;
    client
        .create_collection(CreateCollectionRequest {
            name: collection.clone(),
            description: format!("{} with synthetic metadata", dataset.name),
        })
        .await
        .context("creating the collection")?;
    let documents: Vec<Document> = dataset
        .corpus
        .iter()
        .cloned()
        .enumerate()
        .map(|(index, document)| with_metadata(document, index, &collection))
        .collect();
    let started = Instant::now();
    let summary_of_ingest = client
        .ingest(tokio_stream::iter(documents.clone()))
        .await?
        .into_inner();
    let ingest_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        summary_of_ingest.rejected == 0,
        "documents rejected: {:?}",
        summary_of_ingest.errors.first()
    );
    let filter: Filter = quarry_kit::filter::parse("group=g3").map_err(anyhow::Error::msg)?;
    let admitted = documents
        .iter()
        .filter(|document| document.metadata_json.contains("\"g3\""))
        .count();
    let search = |query: &str, filter: Option<&Filter>| SearchRequest {
        query: query.to_string(),
        k: K,
        mode: SearchMode::Hybrid as i32,
        fusion: Fusion::Rrf as i32,
        collection: collection.clone(),
        filter: filter.cloned(),
    };

    for query in dataset.queries.iter().take(WARM_UP) {
        client.search(search(&query.text, None)).await?;
        client.search(search(&query.text, Some(&filter))).await?;
    }
    let mut unfiltered = Vec::new();
    let mut filtered = Vec::new();
    let mut short_answers = 0;
    for (position, query) in dataset.queries.iter().enumerate() {
        // Alternate which goes first, so neither always finds the other's work cached.
        let order: [Option<&Filter>; 2] = match position % 2 {
            0 => [None, Some(&filter)],
            _ => [Some(&filter), None],
        };
        for chosen in order {
            let started = Instant::now();
            let hits = client
                .search(search(&query.text, chosen))
                .await?
                .into_inner()
                .hits;
            let seconds = started.elapsed().as_secs_f64();
            match chosen {
                None => unfiltered.push(seconds),
                Some(_) => {
                    filtered.push(seconds);
                    if hits.len() < K as usize {
                        short_answers += 1;
                    }
                }
            }
        }
    }
    let ratio = percentile(&filtered, 50.0) / percentile(&unfiltered, 50.0);

    let mut fresh = Vec::new();
    let mut cached = Vec::new();
    let mut cached_flags = 0;
    for query in dataset.queries.iter().take(asks) {
        let ask = || AskRequest {
            question: query.text.clone(),
            collection: collection.clone(),
            ..AskRequest::default()
        };
        let started = Instant::now();
        let answer = client.ask(ask()).await?.into_inner();
        let seconds = started.elapsed().as_secs_f64();
        if !answer.cached {
            fresh.push(seconds);
        }
        for _ in 0..CACHED_REPEATS {
            let started = Instant::now();
            let answer = client.ask(ask()).await?.into_inner();
            cached.push(started.elapsed().as_secs_f64());
            cached_flags += usize::from(answer.cached);
        }
    }
    let cached_p50 = percentile(&cached, 50.0);
    bench.cluster.stop().await?;
    Ok(json!({
        "benchmark": "filters",
        "dataset": dataset.name,
        "documents": documents.len(),
        "shards": shards,
        "ingest_seconds": (ingest_seconds * 10.0).round() / 10.0,
        "filtered_hybrid": {
            "filter": "group=g3",
            "selectivity": admitted as f64 / documents.len().max(1) as f64,
            "k": K,
            "queries": dataset.queries.len(),
            "unfiltered": summary(&unfiltered),
            "filtered": summary(&filtered),
            "p50_ratio_filtered_to_unfiltered": (ratio * 1000.0).round() / 1000.0,
            "target_ratio_at_most": 1.5,
            "filtered_answers_short_of_k": short_answers,
        },
        "cached_ask": {
            "questions": fresh.len(),
            "fresh": summary(&fresh),
            "cached": summary(&cached),
            "answers_flagged_cached": cached_flags,
            "target_cached_p50_ms_under": 2.0,
            "cached_p50_ms": millis(cached_p50),
        },
    }))
}
