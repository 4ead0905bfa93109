//! `quarry bench scale`: what moving partitions costs a serving cluster. An in-process
//! cluster (`quarry up`'s, the same coordinator as in etcd) indexes a BEIR corpus on 2
//! shards; it is restarted with 3, which resizes it; then it is scaled 3 → 2 → 3 → 2 → 3 in
//! process, while a searcher (hybrid, k = 10) and an ingester (new documents, embedded) run
//! throughout. Each sample is tagged by whether a move was under way when it ended.
//!
//! Reported: the move rate (documents and MB per second, nothing re-embedded) against the
//! ingest rate of the same corpus; search p50/p99 during moves against the steady windows
//! between them; ingest throughput during moves against steady.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use quarry_kit::config::QuarryConfig;
use quarry_kit::placement::{Partitioning, PlacementStore};
use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{Document, Fusion, SearchMode, SearchRequest};
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::dataset::Dataset;
use super::metrics::percentile;

pub struct ScaleOptions {
    pub dataset: Dataset,
    pub config: QuarryConfig,
    /// In-process scales after the resize at start.
    pub rounds: usize,
    /// Steady time between scales.
    pub steady: Duration,
}

/// Documents the ingester sends per call.
const INGEST_BATCH: usize = 8;
/// Embedding dimensions of the model (bytes moved per vector: 4 each).
const DIMENSIONS: usize = 384;

fn millis(seconds: f64) -> f64 {
    (seconds * 1e5).round() / 100.0
}

async fn connect(address: &str) -> anyhow::Result<QuarryClient<Channel>> {
    let channel = Channel::from_shared(address.to_string())?.connect().await?;
    Ok(QuarryClient::new(channel)
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024))
}

/// Samples: (seconds, moving) of searches; (documents, seconds, moving) of ingest calls.
#[derive(Default)]
struct Samples {
    searches: Vec<(f64, bool)>,
    ingests: Vec<(usize, f64, bool)>,
    failures: usize,
}

fn moving(placement: &quarry_kit::placement::LocalPlacement) -> bool {
    !placement.watch().borrow().moves.is_empty()
}

pub async fn run_scale(options: ScaleOptions) -> anyhow::Result<Value> {
    let ScaleOptions {
        dataset,
        mut config,
        rounds,
        steady,
    } = options;
    let data_dir = tempfile::tempdir().context("temporary data directory")?;
    config.data_dir = data_dir.path().to_path_buf();
    config.listen = "127.0.0.1:0".to_string();
    config.analyzer.cache_entries = 0;
    config.cache.enabled = false;

    // 1. The corpus on 2 shards: the ingest rate, embedding included.
    config.shards = 2;
    let stop = tokio_util::sync::CancellationToken::new();
    let cluster = crate::up::LocalCluster::start(&config, stop.clone()).await?;
    let mut client = connect(&cluster.gateway_address).await?;
    let started = Instant::now();
    let summary = client
        .ingest(tokio_stream::iter(dataset.corpus.clone()))
        .await?
        .into_inner();
    let ingest_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        summary.rejected == 0,
        "rejected: {:?}",
        summary.errors.first()
    );
    let ingest_rate = dataset.corpus.len() as f64 / ingest_seconds;
    cluster.stop().await?;

    // 2. Restarted with 3 shards: the resize runs at once; then scales back and forth.
    config.shards = 3;
    let stop = tokio_util::sync::CancellationToken::new();
    let cluster = crate::up::LocalCluster::start(&config, stop.clone()).await?;
    let placement = Arc::clone(&cluster.placement);
    let partitioning: Partitioning = placement.watch().borrow().partitioning;
    let samples = Arc::new(Mutex::new(Samples::default()));
    let done = Arc::new(AtomicBool::new(false));
    let searcher = {
        let (samples, done, placement) = (
            Arc::clone(&samples),
            Arc::clone(&done),
            Arc::clone(&placement),
        );
        let mut client = connect(&cluster.gateway_address).await?;
        let queries: Vec<String> = dataset
            .queries
            .iter()
            .map(|query| query.text.clone())
            .collect();
        tokio::spawn(async move {
            let mut turn = 0usize;
            while !done.load(Ordering::Relaxed) {
                let request = SearchRequest {
                    query: queries[turn % queries.len()].clone(),
                    k: 10,
                    mode: SearchMode::Hybrid as i32,
                    fusion: Fusion::Rrf as i32,
                    ..SearchRequest::default()
                };
                turn += 1;
                let started = Instant::now();
                let outcome = client.search(request).await;
                let seconds = started.elapsed().as_secs_f64();
                let mut samples = samples
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                match outcome {
                    Ok(response) if !response.get_ref().partial => {
                        samples.searches.push((seconds, moving(&placement)))
                    }
                    _ => samples.failures += 1,
                }
            }
        })
    };
    // New documents (the corpus again under new ids), so that ingest embeds as it would.
    let extra: Vec<Document> = dataset
        .corpus
        .iter()
        .map(|document| Document {
            id: format!("{}-again", document.id),
            ..document.clone()
        })
        .collect();
    let ingested_ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let ingester = {
        let (samples, done, placement, ids) = (
            Arc::clone(&samples),
            Arc::clone(&done),
            Arc::clone(&placement),
            Arc::clone(&ingested_ids),
        );
        let mut client = connect(&cluster.gateway_address).await?;
        tokio::spawn(async move {
            for batch in extra.chunks(INGEST_BATCH) {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                let outcome = client.ingest(tokio_stream::iter(batch.to_vec())).await;
                let seconds = started.elapsed().as_secs_f64();
                let mut samples = samples
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                match outcome {
                    Ok(summary) if summary.get_ref().rejected == 0 => {
                        samples
                            .ingests
                            .push((batch.len(), seconds, moving(&placement)));
                        if let Ok(mut ids) = ids.lock() {
                            ids.extend(batch.iter().map(|document| document.id.clone()));
                        }
                    }
                    _ => samples.failures += 1,
                }
            }
        })
    };
    // Bytes of a document as a copy moves it: title, text and its vector.
    let bytes_of = |document: &Document| {
        (document.id.len() + document.title.len() + document.text.len() + DIMENSIONS * 4) as u64
    };
    let sizes: std::collections::HashMap<String, u64> = dataset
        .corpus
        .iter()
        .flat_map(|document| {
            let size = bytes_of(document);
            [
                (document.id.clone(), size),
                (format!("{}-again", document.id), size),
            ]
        })
        .collect();
    let mut moves = Vec::new();
    let mut targets = vec![3u32];
    for round in 0..rounds {
        targets.push(if round % 2 == 0 { 2 } else { 3 });
    }
    for (position, target) in targets.into_iter().enumerate() {
        if position > 0 {
            tokio::time::sleep(steady).await;
        }
        let before = placement.refresh().await?;
        let started = Instant::now();
        if position > 0 {
            crate::scale::request_scale(
                placement.as_ref(),
                target,
                crate::scale::Only::default(),
                false,
            )
            .await?;
        }
        let after = crate::scale::wait_settled(placement.as_ref()).await?;
        let seconds = started.elapsed().as_secs_f64();
        let moved: Vec<u32> = (0..partitioning.count())
            .filter(|partition| before.owner(*partition) != after.owner(*partition))
            .collect();
        let ids: Vec<String> = dataset
            .corpus
            .iter()
            .map(|document| document.id.clone())
            .chain(
                ingested_ids
                    .lock()
                    .map(|ids| ids.clone())
                    .unwrap_or_default(),
            )
            .collect();
        let (documents, bytes) = ids
            .iter()
            .filter(|id| moved.contains(&partitioning.partition_of(id)))
            .fold((0u64, 0u64), |(documents, bytes), id| {
                (
                    documents + 1,
                    bytes + sizes.get(id).copied().unwrap_or_default(),
                )
            });
        moves.push(json!({
            "to_shards": target,
            "partitions_moved": moved.len(),
            "documents_moved": documents,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "documents_per_s": (documents as f64 / seconds).round(),
            "mb_per_s": ((bytes as f64 / 1e6 / seconds) * 100.0).round() / 100.0,
        }));
    }
    tokio::time::sleep(steady).await;
    done.store(true, Ordering::Relaxed);
    searcher.await?;
    ingester.abort();
    let _ = ingester.await;
    cluster.stop().await?;

    let samples = samples
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let search_of = |during: bool| -> Vec<f64> {
        samples
            .searches
            .iter()
            .filter(|(_, moving)| *moving == during)
            .map(|(seconds, _)| *seconds)
            .collect()
    };
    let (steady_searches, moving_searches) = (search_of(false), search_of(true));
    let ingest_of = |during: bool| -> f64 {
        let (documents, seconds) = samples
            .ingests
            .iter()
            .filter(|(_, _, moving)| *moving == during)
            .fold((0usize, 0f64), |(documents, total), (count, seconds, _)| {
                (documents + count, total + seconds)
            });
        if seconds > 0.0 {
            documents as f64 / seconds
        } else {
            0.0
        }
    };
    // The resize at start ran before the load began: the in-process scales are measured.
    let measured: Vec<&Value> = moves.iter().skip(1).collect();
    let moved_documents: f64 = measured
        .iter()
        .map(|m| m["documents_moved"].as_f64().unwrap_or(0.0))
        .sum();
    let moved_seconds: f64 = measured
        .iter()
        .map(|m| m["seconds"].as_f64().unwrap_or(0.0))
        .sum();
    let move_rate = if moved_seconds > 0.0 {
        moved_documents / moved_seconds
    } else {
        0.0
    };
    let p99 = |latencies: &[f64]| millis(percentile(latencies, 99.0));
    let p50 = |latencies: &[f64]| millis(percentile(latencies, 50.0));
    let (ingest_steady, ingest_moving) = (ingest_of(false), ingest_of(true));
    Ok(json!({
        "benchmark": "scale",
        "dataset": dataset.name,
        "documents": dataset.corpus.len(),
        "partitions": partitioning.count(),
        "ingest_docs_per_s": (ingest_rate * 10.0).round() / 10.0,
        "moves": moves,
        "move_docs_per_s": move_rate.round(),
        "move_rate_vs_ingest_rate": ((move_rate / ingest_rate) * 10.0).round() / 10.0,
        "search": {
            "steady": {"calls": steady_searches.len(), "p50_ms": p50(&steady_searches), "p99_ms": p99(&steady_searches)},
            "during_moves": {"calls": moving_searches.len(), "p50_ms": p50(&moving_searches), "p99_ms": p99(&moving_searches)},
            "p99_ratio_during_to_steady": ((percentile(&moving_searches, 99.0) / percentile(&steady_searches, 99.0)) * 100.0).round() / 100.0,
        },
        "ingest_during_scales": {
            "steady_docs_per_s": (ingest_steady * 10.0).round() / 10.0,
            "during_moves_docs_per_s": (ingest_moving * 10.0).round() / 10.0,
            "ratio_during_to_steady": if ingest_steady > 0.0 { ((ingest_moving / ingest_steady) * 100.0).round() / 100.0 } else { 0.0 },
        },
        "failed_or_partial_calls": samples.failures,
    }))
}
