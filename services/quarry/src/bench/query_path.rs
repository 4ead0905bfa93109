//! `quarry bench query-path`: what one query costs across shards. For each shard count an
//! in-process cluster is fed the same corpus, then every query runs twice through the
//! gateway — the first pass finds no statistics cached (a `CollectStats` round trip on
//! several shards), the second reuses them — as hybrid k = 100 and as keyword k = 10.
//! Printed beside them: the same keyword search in-process on one shard holding everything
//! (search plus loading the hits, what the gateway returns), the bytes shards sent the
//! gateway per hybrid query (decoded, from the gateway's counter, and on the wire, from the
//! retrievers' response-bytes counter: `Fetch` replies are zstd-compressed), and the bytes
//! the former protocol sent for the same query — every candidate with its title and text,
//! uncompressed, plus a statistics reply — measured by asking each shard directly.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context};
use prost::Message;
use quarry_kit::config::QuarryConfig;
use quarry_proto::v1::analyzer_client::AnalyzerClient;
use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::retriever_client::RetrieverClient;
use quarry_proto::v1::{
    ClusterStatusRequest, CollectStatsRequest, EmbedRequest, SearchMode, SearchRequest,
    ShardSearchRequest,
};
use quarry_retriever::{Shard, StoredDocument};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tracing::info;

use super::dataset::Dataset;
use super::metrics::percentile;
use super::BenchCluster;

pub struct QueryPathOptions {
    pub dataset: Dataset,
    pub shard_counts: Vec<u32>,
    pub config: QuarryConfig,
    /// Queries whose former-protocol bytes are measured (each asks every shard directly).
    pub byte_queries: usize,
}

pub async fn run_query_path(options: QueryPathOptions) -> anyhow::Result<Value> {
    let dataset = &options.dataset;
    let in_process = in_process_keyword(dataset)?;
    info!(p50_ms = in_process, "in-process keyword search measured");
    let mut by_shards = Vec::new();
    for &shards in &options.shard_counts {
        // Every query is embedded each time, as a new question would be.
        let BenchCluster {
            cluster,
            mut client,
            data_dir: _data_dir,
        } = BenchCluster::start(&options.config, shards).await?;
        let summary = client
            .ingest(tokio_stream::iter(dataset.corpus.clone()))
            .await
            .context("ingest")?
            .into_inner();
        if summary.rejected > 0 {
            bail!("{} documents were rejected", summary.rejected);
        }
        info!(shards, docs = summary.accepted, "corpus ingested");

        // Decoded bytes the gateway received per rpc, then the bytes the retrievers sent on
        // the wire (after compression), per rpc.
        let search_bytes = || {
            let metric = &quarry_gateway::metrics::metrics().shard_reply_bytes;
            let decoded = ["collect_stats", "search", "fetch"]
                .map(|rpc| metric.with_label_values(&[rpc]).get());
            let sent = ["CollectStats", "Search", "Fetch"].map(retriever_bytes_sent);
            [decoded, sent].concat()
        };
        let hybrid = |query: &str| SearchRequest {
            query: query.to_string(),
            k: 100,
            mode: SearchMode::Hybrid as i32,
            ..SearchRequest::default()
        };
        let keyword = |query: &str| SearchRequest {
            query: query.to_string(),
            k: 10,
            mode: SearchMode::Keyword as i32,
            ..SearchRequest::default()
        };
        let before = search_bytes();
        let (hybrid_cold, _) = timed_pass(&mut client, dataset, hybrid).await?;
        let middle = search_bytes();
        let (hybrid_warm, client_reply_bytes) = timed_pass(&mut client, dataset, hybrid).await?;
        let after = search_bytes();
        let (keyword_cold, _) = timed_pass(&mut client, dataset, keyword).await?;
        let (keyword_warm, _) = timed_pass(&mut client, dataset, keyword).await?;
        let per_query = |from: Vec<u64>, to: Vec<u64>| {
            let bytes: Vec<f64> = (0..6)
                .map(|rpc| (to[rpc] - from[rpc]) as f64 / dataset.queries.len() as f64)
                .collect();
            json!({
                "decoded": {
                    "collect_stats": bytes[0].round(),
                    "search": bytes[1].round(),
                    "fetch": bytes[2].round(),
                    "total": (bytes[0] + bytes[1] + bytes[2]).round(),
                },
                "on_the_wire": {
                    "collect_stats": bytes[3].round(),
                    "search": bytes[4].round(),
                    "fetch": bytes[5].round(),
                    "total": (bytes[3] + bytes[4] + bytes[5]).round(),
                },
            })
        };
        let former = former_protocol_bytes(&mut client, dataset, options.byte_queries).await?;
        let entry = json!({
            "shards": shards,
            "docs": summary.accepted,
            "hybrid_k100_ms": {
                "cold_statistics": latency(&hybrid_cold),
                "cached_statistics": latency(&hybrid_warm),
            },
            "keyword_k10_ms": {
                "cold_statistics": latency(&keyword_cold),
                "cached_statistics": latency(&keyword_warm),
            },
            "hybrid_k100_shard_bytes_per_query": {
                "cold_statistics": per_query(before, middle.clone()),
                "cached_statistics": per_query(middle, after),
                "former_protocol": former,
            },
            "hybrid_k100_client_reply_bytes": client_reply_bytes.round(),
        });
        info!(shards, result = %entry, "shard count measured");
        by_shards.push(entry);
        drop(client);
        cluster.stop().await?;
    }
    let p50 = |shards: u32, mode: &str, pass: &str| {
        by_shards
            .iter()
            .find(|entry| entry["shards"] == shards)
            .and_then(|entry| entry[mode][pass]["p50"].as_f64())
    };
    let ratio = |numerator: Option<f64>, denominator: Option<f64>| match (numerator, denominator) {
        (Some(numerator), Some(denominator)) if denominator > 0.0 => {
            json!((numerator / denominator * 100.0).round() / 100.0)
        }
        _ => Value::Null,
    };
    let bytes_of = |shards: u32, what: &str, kind: &str| {
        by_shards
            .iter()
            .find(|entry| entry["shards"] == shards)
            .and_then(|entry| {
                let bytes = &entry["hybrid_k100_shard_bytes_per_query"][what];
                match what {
                    "former_protocol" => bytes["total"].as_f64(),
                    _ => bytes[kind]["total"].as_f64(),
                }
            })
    };
    Ok(json!({
        "dataset": dataset.name,
        "queries": dataset.queries.len(),
        "in_process_keyword_k10_p50_ms": round3(in_process),
        "by_shards": by_shards,
        "targets": {
            "keyword_2_shards_over_in_process_p50": {
                "cold_statistics": ratio(p50(2, "keyword_k10_ms", "cold_statistics"), Some(in_process)),
                "cached_statistics": ratio(p50(2, "keyword_k10_ms", "cached_statistics"), Some(in_process)),
                "target": 1.3,
            },
            "hybrid_k100_8_over_1_shards_p50": {
                "cold_statistics": ratio(p50(8, "hybrid_k100_ms", "cold_statistics"), p50(1, "hybrid_k100_ms", "cold_statistics")),
                "cached_statistics": ratio(p50(8, "hybrid_k100_ms", "cached_statistics"), p50(1, "hybrid_k100_ms", "cached_statistics")),
                "target": 1.25,
            },
            "shard_bytes_4_shards_former_over_now": {
                "on_the_wire": ratio(bytes_of(4, "former_protocol", ""), bytes_of(4, "cached_statistics", "on_the_wire")),
                "decoded": ratio(bytes_of(4, "former_protocol", ""), bytes_of(4, "cached_statistics", "decoded")),
                "cold_statistics_on_the_wire": ratio(bytes_of(4, "former_protocol", ""), bytes_of(4, "cold_statistics", "on_the_wire")),
                "target": 10.0,
            },
        },
    }))
}

/// Every query once, in order; latencies in ms and the mean client reply size.
async fn timed_pass(
    client: &mut QuarryClient<Channel>,
    dataset: &Dataset,
    request: impl Fn(&str) -> SearchRequest,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let mut latencies = Vec::with_capacity(dataset.queries.len());
    let mut reply_bytes = 0usize;
    for query in &dataset.queries {
        let started = Instant::now();
        let response = client
            .search(request(&query.text))
            .await
            .with_context(|| format!("query {}", query.id))?
            .into_inner();
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        reply_bytes += response.encoded_len();
    }
    Ok((
        latencies,
        reply_bytes as f64 / dataset.queries.len().max(1) as f64,
    ))
}

fn latency(latencies: &[f64]) -> Value {
    json!({
        "p50": round3(percentile(latencies, 50.0)),
        "p99": round3(percentile(latencies, 99.0)),
    })
}

/// BM25 top 10 plus loading those 10 documents, on one shard holding the whole corpus in
/// this process: the median over two passes of every query (the first warms the index).
fn in_process_keyword(dataset: &Dataset) -> anyhow::Result<f64> {
    let directory = tempfile::tempdir()?;
    let shard = Shard::open(directory.path(), 0, 0, 200_000_000)?;
    let documents: Vec<StoredDocument> = dataset
        .corpus
        .iter()
        .map(|document| StoredDocument {
            id: document.id.clone(),
            title: document.title.clone(),
            text: document.text.clone(),
            ..StoredDocument::default()
        })
        .collect();
    for chunk in documents.chunks(1000) {
        shard.upsert(chunk)?;
    }
    let mut latencies = Vec::new();
    for pass in 0..2 {
        for query in &dataset.queries {
            let started = Instant::now();
            let hits = shard.search_keyword(&query.text, 10, None)?;
            let ids: Vec<String> = hits.into_iter().map(|hit| hit.doc_id).collect();
            let fetched = shard.fetch(&ids)?;
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            std::hint::black_box(fetched);
            if pass == 1 {
                latencies.push(elapsed);
            }
        }
    }
    Ok(percentile(&latencies, 50.0))
}

/// Mean bytes per hybrid k = 100 query under the former protocol: a `CollectStats` reply
/// from every shard, then every shard's 100 keyword and 100 vector candidates, each with
/// its title and text. Measured on the first `queries` queries by asking each shard directly
/// for the same candidates and adding the sizes of their title and text fields.
async fn former_protocol_bytes(
    client: &mut QuarryClient<Channel>,
    dataset: &Dataset,
    queries: usize,
) -> anyhow::Result<Value> {
    let status = client
        .cluster_status(ClusterStatusRequest::default())
        .await?
        .into_inner();
    let mut retrievers: HashMap<u32, RetrieverClient<Channel>> = HashMap::new();
    let mut analyzer = None;
    for member in &status.members {
        let channel = || Channel::from_shared(member.address.clone());
        match member.role.as_str() {
            "retriever" if member.ready && !retrievers.contains_key(&member.shard) => {
                let channel = channel()?.connect().await?;
                let retriever = RetrieverClient::new(channel).max_decoding_message_size(64 << 20);
                retrievers.insert(member.shard, retriever);
            }
            "analyzer" if analyzer.is_none() => {
                analyzer = Some(AnalyzerClient::new(channel()?.connect().await?));
            }
            _ => {}
        }
    }
    let mut analyzer = analyzer.context("no analyzer in the cluster status")?;
    let stored: HashMap<&str, (&str, &str)> = dataset
        .corpus
        .iter()
        .map(|document| {
            (
                document.id.as_str(),
                (document.title.as_str(), document.text.as_str()),
            )
        })
        .collect();
    let field = |text: &str| match text.len() {
        0 => 0,
        length => 1 + prost::encoding::encoded_len_varint(length as u64) + length,
    };
    let mut total = 0usize;
    let mut measured = 0usize;
    for query in dataset.queries.iter().take(queries) {
        let vector = analyzer
            .embed(EmbedRequest {
                texts: vec![query.text.clone()],
                documents: false,
            })
            .await?
            .into_inner()
            .vectors
            .pop()
            .map(|vector| vector.values)
            .unwrap_or_default();
        let mut per_shard = Vec::new();
        for retriever in retrievers.values_mut() {
            let stats = retriever
                .collect_stats(CollectStatsRequest {
                    query: query.text.clone(),
                    sub_queries: Vec::new(),
                })
                .await?
                .into_inner();
            total += stats.encoded_len();
            per_shard.push(stats);
        }
        let global = quarry_gateway::sum_statistics(&per_shard);
        for retriever in retrievers.values_mut() {
            let response = retriever
                .search(ShardSearchRequest {
                    query: query.text.clone(),
                    keyword_k: 100,
                    vector_k: 100,
                    query_vector: vector.clone(),
                    global_stats: Some(global.clone()),
                    ..ShardSearchRequest::default()
                })
                .await?
                .into_inner();
            let mut bytes = response.encoded_len();
            for candidate in response.keyword.iter().chain(&response.vector) {
                let (title, text) = stored
                    .get(candidate.doc_id.as_str())
                    .copied()
                    .unwrap_or_default();
                let with_fields = candidate.encoded_len() + field(title) + field(text);
                bytes += with_fields - candidate.encoded_len()
                    + prost::encoding::encoded_len_varint(with_fields as u64)
                    - prost::encoding::encoded_len_varint(candidate.encoded_len() as u64);
            }
            total += bytes;
        }
        measured += 1;
    }
    Ok(json!({
        "queries": measured,
        "total": (total as f64 / measured.max(1) as f64).round(),
    }))
}

/// Response bytes every retriever of this process has sent for `method`, on the wire.
fn retriever_bytes_sent(method: &str) -> u64 {
    quarry_kit::metrics::registry()
        .gather()
        .iter()
        .filter(|family| family.name() == "quarry_grpc_server_response_bytes_total")
        .flat_map(|family| family.get_metric())
        .filter(|metric| {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|pair| pair.name() == name)
                    .map(|pair| pair.value().to_string())
            };
            label("service").as_deref() == Some("quarry.v1.Retriever")
                && label("method").as_deref() == Some(method)
        })
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
