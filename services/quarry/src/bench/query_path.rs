//! `quarry bench query-path`: what one query costs across shards. For each shard count an
//! in-process cluster is fed the same corpus and every query runs through the gateway once
//! as keyword k = 10 — finding no statistics cached, so several shards pay a `CollectStats`
//! round trip — and once as hybrid k = 100; then the clusters take turns, three rounds of
//! a keyword and a hybrid pass each (statistics cached), so that the machine's drift over
//! the run weighs on every shard count alike.
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

/// Measured passes per cluster after the first; the clusters (and the in-process shard)
/// take turns, pass by pass, so that a machine slowing down over the run weighs on every
/// shard count alike.
const ROUNDS: usize = 3;

/// One cluster under measurement and what it measured.
struct Measured {
    shards: u32,
    docs: u64,
    bench: BenchCluster,
    keyword_cold: Vec<f64>,
    keyword: Vec<f64>,
    hybrid_first: Vec<f64>,
    hybrid: Vec<f64>,
    /// Counter readings around the cold keyword pass, and summed over the measured hybrid
    /// passes (`hybrid_queries` queries).
    keyword_cold_bytes: Vec<u64>,
    hybrid_bytes: Vec<u64>,
    hybrid_queries: usize,
    client_reply_bytes: f64,
    former: Value,
}

pub async fn run_query_path(options: QueryPathOptions) -> anyhow::Result<Value> {
    let dataset = &options.dataset;
    let in_process_shard = InProcessShard::open(dataset)?;
    // A first pass warms the index; the measured ones take turns with the clusters.
    in_process_shard.keyword_pass(dataset)?;
    let mut in_process_latencies = Vec::new();
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
    let mut clusters = Vec::new();
    for &shards in &options.shard_counts {
        // Every query is embedded each time, as a new question would be.
        let mut bench = BenchCluster::start(&options.config, shards).await?;
        let summary = bench
            .client
            .ingest(tokio_stream::iter(dataset.corpus.clone()))
            .await
            .context("ingest")?
            .into_inner();
        if summary.rejected > 0 {
            bail!("{} documents were rejected", summary.rejected);
        }
        info!(shards, docs = summary.accepted, "corpus ingested");
        // The first pass finds no statistics cached (the keyword and hybrid forms of a
        // query share them); every later pass reuses them.
        let before = search_bytes();
        let (keyword_cold, _) = timed_pass(&mut bench.client, dataset, keyword).await?;
        let keyword_cold_bytes = difference(&before, &search_bytes());
        let (hybrid_first, _) = timed_pass(&mut bench.client, dataset, hybrid).await?;
        let former =
            former_protocol_bytes(&mut bench.client, dataset, options.byte_queries).await?;
        clusters.push(Measured {
            shards,
            docs: summary.accepted,
            bench,
            keyword_cold,
            keyword: Vec::new(),
            hybrid_first,
            hybrid: Vec::new(),
            keyword_cold_bytes,
            hybrid_bytes: vec![0; 6],
            hybrid_queries: 0,
            client_reply_bytes: 0.0,
            former,
        });
    }
    for round in 0..ROUNDS {
        in_process_latencies.extend(in_process_shard.keyword_pass(dataset)?);
        for measured in &mut clusters {
            let (latencies, _) = timed_pass(&mut measured.bench.client, dataset, keyword).await?;
            measured.keyword.extend(latencies);
            let before = search_bytes();
            let (latencies, reply_bytes) =
                timed_pass(&mut measured.bench.client, dataset, hybrid).await?;
            let bytes = difference(&before, &search_bytes());
            for (total, added) in measured.hybrid_bytes.iter_mut().zip(bytes) {
                *total += added;
            }
            measured.hybrid_queries += latencies.len();
            measured.hybrid.extend(latencies);
            measured.client_reply_bytes = reply_bytes;
            info!(round, shards = measured.shards, "round measured");
        }
    }
    let in_process = percentile(&in_process_latencies, 50.0);
    let mut by_shards = Vec::new();
    for measured in clusters {
        let per_query = |bytes: &[u64], queries: usize| {
            let bytes: Vec<f64> = bytes
                .iter()
                .map(|bytes| *bytes as f64 / queries.max(1) as f64)
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
        let queries = dataset.queries.len();
        by_shards.push(json!({
            "shards": measured.shards,
            "docs": measured.docs,
            "hybrid_k100_ms": {
                "first_pass": latency(&measured.hybrid_first),
                "cached_statistics": latency(&measured.hybrid),
            },
            "keyword_k10_ms": {
                "cold_statistics": latency(&measured.keyword_cold),
                "cached_statistics": latency(&measured.keyword),
            },
            "hybrid_k100_shard_bytes_per_query": {
                "cached_statistics": per_query(&measured.hybrid_bytes, measured.hybrid_queries),
                "former_protocol": measured.former,
            },
            "keyword_k10_shard_bytes_per_query_cold_statistics":
                per_query(&measured.keyword_cold_bytes, queries),
            "hybrid_k100_client_reply_bytes": measured.client_reply_bytes.round(),
        }));
        measured.bench.cluster.stop().await?;
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
                "first_pass": ratio(p50(8, "hybrid_k100_ms", "first_pass"), p50(1, "hybrid_k100_ms", "first_pass")),
                "cached_statistics": ratio(p50(8, "hybrid_k100_ms", "cached_statistics"), p50(1, "hybrid_k100_ms", "cached_statistics")),
                "target": 1.25,
            },
            "shard_bytes_4_shards_former_over_now": {
                "on_the_wire": ratio(bytes_of(4, "former_protocol", ""), bytes_of(4, "cached_statistics", "on_the_wire")),
                "decoded": ratio(bytes_of(4, "former_protocol", ""), bytes_of(4, "cached_statistics", "decoded")),
                "target": 10.0,
            },
        },
    }))
}

/// Decoded bytes the gateway has received per rpc (collect_stats, search, fetch), then the
/// bytes the retrievers have sent on the wire (after compression), per rpc.
fn search_bytes() -> Vec<u64> {
    let metric = &quarry_gateway::metrics::metrics().shard_reply_bytes;
    let decoded =
        ["collect_stats", "search", "fetch"].map(|rpc| metric.with_label_values(&[rpc]).get());
    let sent = ["CollectStats", "Search", "Fetch"].map(retriever_bytes_sent);
    [decoded, sent].concat()
}

fn difference(before: &[u64], after: &[u64]) -> Vec<u64> {
    before
        .iter()
        .zip(after)
        .map(|(before, after)| after - before)
        .collect()
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

/// One shard holding the whole corpus in this process: the reference a search through the
/// gateway is compared with.
struct InProcessShard {
    shard: Shard,
    _directory: tempfile::TempDir,
}

impl InProcessShard {
    fn open(dataset: &Dataset) -> anyhow::Result<Self> {
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
        Ok(Self {
            shard,
            _directory: directory,
        })
    }

    /// Every query once: BM25 top 10 plus loading those 10 documents (what the gateway
    /// returns), in ms.
    fn keyword_pass(&self, dataset: &Dataset) -> anyhow::Result<Vec<f64>> {
        let mut latencies = Vec::with_capacity(dataset.queries.len());
        for query in &dataset.queries {
            let started = Instant::now();
            let hits = self.shard.search_keyword(&query.text, 10, None, None)?;
            let ids: Vec<String> = hits.into_iter().map(|hit| hit.doc_id).collect();
            std::hint::black_box(self.shard.fetch(&ids)?);
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(latencies)
    }
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
                    ..CollectStatsRequest::default()
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
