//! `quarry bench`: benchmarks that print JSON — `beir` (ranking quality, shard invariance,
//! ingest and query speed on a BEIR dataset), `tail` (tail latency with a slow replica,
//! hedging off and on), `analyzer` (query-type accuracy) and `embed` (embedding throughput,
//! one at a time against concurrent, batched), `scheduler` (no-op steps per second with
//! durable state in etcd), `tracing` (query throughput with span export off and on),
//! `query-path` (latency and bytes by shard count), `overload` (Asks at 10× capacity) and
//! `filters` (a filtered hybrid search against an unfiltered one; a cached Ask) and `scale`
//! (moving partitions under search and ingest load).

mod analyzer;
mod beir;
pub mod dataset;
mod embed;
mod filters;
#[cfg(feature = "test-hooks")]
mod first_token;
mod local_etcd;
pub mod metrics;
mod overload;
mod query_path;
mod scale;
mod scheduler;
mod tail;
#[cfg(feature = "test-hooks")]
mod tracing_overhead;

use std::path::Path;

use anyhow::Context;
use quarry_kit::config::QuarryConfig;
use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{Fusion, SearchMode};
use serde_json::Value;
use tonic::transport::Channel;

use crate::cli::{
    BeirArgs, EmbedBenchArgs, FirstTokenArgs, ModeArg, QueryPathArgs, SchedulerBenchArgs, TailArgs,
    TracingBenchArgs,
};
use beir::{run_beir, BeirOptions, Setting};
use dataset::Dataset;

pub use analyzer::run_analyzer_bench;

/// An in-process cluster of some shards on a fresh data directory, and a client of its
/// gateway. The analyzer's caches are off: every pass repeats the same queries, and with
/// caches later passes would measure cache hits, not embeddings.
pub(crate) struct BenchCluster {
    pub cluster: crate::up::LocalCluster,
    pub client: QuarryClient<Channel>,
    /// Removed when dropped, after the cluster stops.
    pub data_dir: tempfile::TempDir,
}

impl BenchCluster {
    pub async fn start(config: &QuarryConfig, shards: u32) -> anyhow::Result<Self> {
        let data_dir = tempfile::tempdir().context("temporary data directory")?;
        let mut config = config.clone();
        config.shards = shards;
        config.data_dir = data_dir.path().to_path_buf();
        config.listen = "127.0.0.1:0".to_string();
        config.analyzer.cache_entries = 0;
        let cluster =
            crate::up::LocalCluster::start(&config, tokio_util::sync::CancellationToken::new())
                .await?;
        let channel = Channel::from_shared(cluster.gateway_address.clone())?
            .connect()
            .await?;
        let client = QuarryClient::new(channel)
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024);
        Ok(Self {
            cluster,
            client,
            data_dir,
        })
    }
}

pub async fn run_overload_bench(
    args: &crate::cli::OverloadArgs,
    config: QuarryConfig,
) -> anyhow::Result<()> {
    let mut dataset = Dataset::load(&args.dataset)?;
    dataset.corpus.truncate(args.limit_docs);
    let report = overload::run_overload(overload::OverloadOptions {
        dataset,
        config,
        seconds: args.seconds,
        factor: args.factor,
        deadline: std::time::Duration::from_millis(args.deadline_ms),
    })
    .await?;
    print_and_save(&report, args.out.as_deref())
}

pub async fn run_filters_bench(
    args: &crate::cli::FiltersBenchArgs,
    config: QuarryConfig,
) -> anyhow::Result<()> {
    let mut dataset = Dataset::load(&args.dataset)?;
    if let Some(limit) = args.limit_docs {
        dataset.corpus.truncate(limit);
    }
    if let Some(limit) = args.limit_queries {
        dataset.queries.truncate(limit);
    }
    let report = filters::run_filters(filters::FiltersOptions {
        dataset,
        config,
        collection: args.collection.clone(),
        shards: args.shards,
        asks: args.asks,
    })
    .await?;
    print_and_save(&report, args.out.as_deref())
}

pub async fn run_query_path_bench(
    args: &QueryPathArgs,
    config: QuarryConfig,
) -> anyhow::Result<()> {
    let mut dataset = Dataset::load(&args.dataset)?;
    if let Some(limit) = args.limit_docs {
        dataset.corpus.truncate(limit);
    }
    let report = query_path::run_query_path(query_path::QueryPathOptions {
        dataset,
        shard_counts: args.shards.clone(),
        config,
        byte_queries: args.byte_queries,
    })
    .await?;
    print_and_save(&report, args.out.as_deref())
}

pub async fn run_beir_bench(args: &BeirArgs, config: QuarryConfig) -> anyhow::Result<()> {
    let mut dataset = Dataset::load(&args.dataset)?;
    if let Some(limit) = args.limit_queries {
        dataset.queries.truncate(limit);
    }
    if let Some(limit) = args.limit_docs {
        // Latency and ingest rate on a smaller corpus; nDCG then counts missing documents.
        dataset.corpus.truncate(limit);
    }
    let mut settings = Vec::new();
    for mode in &args.modes {
        match mode {
            ModeArg::Keyword => settings.push(Setting {
                mode: SearchMode::Keyword,
                fusion: Fusion::Unspecified,
            }),
            ModeArg::Semantic => settings.push(Setting {
                mode: SearchMode::Semantic,
                fusion: Fusion::Unspecified,
            }),
            ModeArg::Hybrid if args.compare_fusion => {
                for fusion in [Fusion::Rrf, Fusion::Weighted] {
                    settings.push(Setting {
                        mode: SearchMode::Hybrid,
                        fusion,
                    });
                }
            }
            ModeArg::Hybrid => settings.push(Setting {
                mode: SearchMode::Hybrid,
                fusion: Fusion::Unspecified,
            }),
        }
    }
    let report = run_beir(BeirOptions {
        dataset,
        shard_counts: args.shards.clone(),
        settings,
        config,
        asks: args.asks,
    })
    .await?;
    print_and_save(&report, args.out.as_deref())
}

/// Prints the report and, when asked, writes it to a file.
pub fn print_and_save(report: &Value, out: Option<&Path>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    println!("{text}");
    if let Some(path) = out {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub async fn run_tail_bench(args: &TailArgs, config: QuarryConfig) -> anyhow::Result<()> {
    let dataset = Dataset::load(&args.dataset)?;
    let report = tail::run_tail(&dataset, args.queries, config).await?;
    print_and_save(&report, args.out.as_deref())
}

pub async fn run_embed_bench(args: &EmbedBenchArgs, config: QuarryConfig) -> anyhow::Result<()> {
    let dataset = Dataset::load(&args.dataset)?;
    let options = embed::EmbedBenchOptions {
        queries: dataset
            .queries
            .into_iter()
            .map(|query| query.text)
            .collect(),
        texts: args.texts,
        concurrency: args.concurrency,
    };
    let report = embed::run_embed(options, &config).await?;
    print_and_save(&report, args.out.as_deref())
}

#[cfg(feature = "test-hooks")]
pub async fn run_first_token_bench(
    args: &FirstTokenArgs,
    config: QuarryConfig,
) -> anyhow::Result<()> {
    let report = first_token::run_first_token(args.asks, config).await?;
    print_and_save(&report, args.out.as_deref())
}

#[cfg(feature = "test-hooks")]
pub async fn run_tracing_bench(args: &TracingBenchArgs) -> anyhow::Result<()> {
    let dataset = Dataset::load(&args.dataset)?;
    let options = tracing_overhead::TracingBenchOptions {
        window: std::time::Duration::from_secs_f64(args.seconds),
        concurrency: args.concurrency.max(1),
        rounds: args.rounds.max(1),
    };
    let report = tracing_overhead::run_tracing(&dataset, options).await?;
    print_and_save(&report, args.out.as_deref())
}

/// `bench first-token` measures against the fake chat server, a test hook.
#[cfg(not(feature = "test-hooks"))]
pub async fn run_first_token_bench(
    _args: &FirstTokenArgs,
    _config: QuarryConfig,
) -> anyhow::Result<()> {
    Err(without_test_hooks("bench first-token"))
}

/// `bench tracing` exports to the in-process OTLP receiver, a test hook.
#[cfg(not(feature = "test-hooks"))]
pub async fn run_tracing_bench(_args: &TracingBenchArgs) -> anyhow::Result<()> {
    Err(without_test_hooks("bench tracing"))
}

/// The error of a benchmark that needs a hook only test and benchmark builds have.
#[cfg(not(feature = "test-hooks"))]
pub fn without_test_hooks(command: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{command} needs a build with the test hooks: cargo build --release -p quarry \
         --features test-hooks (make bench does)"
    )
}

pub async fn run_scheduler_bench(
    args: &SchedulerBenchArgs,
    config: QuarryConfig,
) -> anyhow::Result<()> {
    let report = scheduler::run_scheduler(args, config).await?;
    print_and_save(&report, args.out.as_deref())
}

pub async fn run_scale_bench(
    args: &crate::cli::ScaleBenchArgs,
    config: QuarryConfig,
) -> anyhow::Result<()> {
    let mut dataset = Dataset::load(&args.dataset)?;
    if let Some(limit) = args.limit_docs {
        dataset.corpus.truncate(limit);
    }
    let report = scale::run_scale(scale::ScaleOptions {
        dataset,
        config,
        rounds: args.rounds,
        steady: std::time::Duration::from_secs(args.steady_s),
    })
    .await?;
    print_and_save(&report, args.out.as_deref())
}
