//! `quarry bench embed`: embedding throughput of an in-process analyzer gRPC server with the
//! configured encoder, for short queries sent one at a time and then the same queries from
//! many concurrent clients, whose requests the batcher gathers into shared forward passes.
//! The analyzer runs without caches, so both passes encode every text.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use quarry_analyzer::{AnalyzerService, BatchStats};
use quarry_kit::config::QuarryConfig;
use quarry_kit::server::{dial_address, serve, RoleServer};
use quarry_proto::v1::analyzer_client::AnalyzerClient;
use quarry_proto::v1::analyzer_server::AnalyzerServer;
use quarry_proto::v1::EmbedRequest;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Channel;

use super::metrics::percentile;
use crate::roles::{batch_options, build_encoder};

/// Texts embedded before measuring (model warm-up, connections).
const WARM_UP_TEXTS: usize = 16;

pub struct EmbedBenchOptions {
    /// The query texts, cycled to `texts`.
    pub queries: Vec<String>,
    pub texts: usize,
    pub concurrency: usize,
}

pub async fn run_embed(options: EmbedBenchOptions, config: &QuarryConfig) -> anyhow::Result<Value> {
    anyhow::ensure!(!options.queries.is_empty(), "no queries to embed");
    let texts: Vec<String> = options
        .queries
        .iter()
        .cycle()
        .take(options.texts.max(1))
        .cloned()
        .collect();
    let concurrency = options.concurrency.max(1);
    let encoder = build_encoder(config)?
        .context("analyzer.encoder = \"none\": there is nothing to benchmark")?;
    let encoder_name = encoder.name();
    let batching = batch_options(config);
    let analyzer = Arc::new(AnalyzerService::new(Some(encoder), batching)?);

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = dial_address(listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let role_server = RoleServer {
        role: "analyzer",
        routes: Routes::new(AnalyzerServer::from_arc(Arc::clone(&analyzer))),
        service_names: vec!["quarry.v1.Analyzer"],
        shard_replica: None,
        tls: None,
        health_listener: None,
        internal_tls: None,
    };
    let server = tokio::spawn({
        let server_config = config.server.clone();
        let shutdown = shutdown.clone();
        async move { serve(listener, role_server, &server_config, shutdown).await }
    });

    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let channel = Channel::from_shared(address.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .context("connecting to the analyzer")?;
        clients.push(AnalyzerClient::new(channel));
    }
    let warm_up: Vec<String> = texts.iter().take(WARM_UP_TEXTS).cloned().collect();
    one_at_a_time(&mut clients[0], &warm_up).await?;

    let before = stats(&analyzer);
    let sequential = one_at_a_time(&mut clients[0], &texts).await?;
    let after_sequential = stats(&analyzer);
    let concurrent = concurrently(clients, Arc::new(texts.clone())).await?;
    let after_concurrent = stats(&analyzer);

    shutdown.cancel();
    server.await??;
    let sequential_rate = rate(texts.len(), sequential.elapsed);
    let concurrent_rate = rate(texts.len(), concurrent.elapsed);
    Ok(json!({
        "encoder": encoder_name,
        "texts": texts.len(),
        "mean_text_chars": texts.iter().map(|text| text.chars().count()).sum::<usize>() as f64 / texts.len() as f64,
        "concurrency": concurrency,
        "max_batch": batching.max_batch,
        "batch_window_us": batching.window.as_micros() as u64,
        "batch_workers": batching.workers,
        "forward_threads": config.analyzer.encoder_threads,
        "spinning": config.analyzer.encoder_spinning,
        "precision": config.analyzer.precision,
        "caches": "off",
        "one_at_a_time": pass_report(&sequential, texts.len(), &before, &after_sequential),
        "concurrent": pass_report(&concurrent, texts.len(), &after_sequential, &after_concurrent),
        "speedup": if sequential_rate > 0.0 { concurrent_rate / sequential_rate } else { 0.0 },
    }))
}

struct Pass {
    elapsed: Duration,
    /// Per-request latencies in milliseconds.
    latencies_ms: Vec<f64>,
}

fn stats(analyzer: &AnalyzerService) -> BatchStats {
    analyzer.batch_stats().unwrap_or_default()
}

fn rate(texts: usize, elapsed: Duration) -> f64 {
    texts as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
}

fn pass_report(pass: &Pass, texts: usize, before: &BatchStats, after: &BatchStats) -> Value {
    let batches = after.batches.saturating_sub(before.batches);
    let embedded = after.texts.saturating_sub(before.texts);
    json!({
        "seconds": pass.elapsed.as_secs_f64(),
        "texts_per_s": rate(texts, pass.elapsed),
        "p50_ms": percentile(&pass.latencies_ms, 50.0),
        "p99_ms": percentile(&pass.latencies_ms, 99.0),
        "batches": batches,
        "mean_batch": if batches == 0 { 0.0 } else { embedded as f64 / batches as f64 },
        "largest_batch_so_far": after.largest_batch,
    })
}

async fn embed_one(client: &mut AnalyzerClient<Channel>, text: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let response = client
        .embed(EmbedRequest {
            texts: vec![text.to_string()],
            documents: false,
        })
        .await
        .context("Embed")?;
    anyhow::ensure!(
        response.get_ref().vectors.len() == 1,
        "Embed returned no vector"
    );
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

async fn one_at_a_time(
    client: &mut AnalyzerClient<Channel>,
    texts: &[String],
) -> anyhow::Result<Pass> {
    let started = Instant::now();
    let mut latencies_ms = Vec::with_capacity(texts.len());
    for text in texts {
        latencies_ms.push(embed_one(client, text).await?);
    }
    Ok(Pass {
        elapsed: started.elapsed(),
        latencies_ms,
    })
}

/// Each client takes the next text until none is left.
async fn concurrently(
    clients: Vec<AnalyzerClient<Channel>>,
    texts: Arc<Vec<String>>,
) -> anyhow::Result<Pass> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients.len());
    for mut client in clients {
        let texts = Arc::clone(&texts);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut latencies_ms = Vec::new();
            while let Some(text) = texts.get(next.fetch_add(1, Ordering::Relaxed)) {
                latencies_ms.push(embed_one(&mut client, text).await?);
            }
            anyhow::Ok(latencies_ms)
        }));
    }
    let mut latencies_ms = Vec::with_capacity(texts.len());
    for task in tasks {
        latencies_ms.extend(task.await??);
    }
    Ok(Pass {
        elapsed: started.elapsed(),
        latencies_ms,
    })
}
