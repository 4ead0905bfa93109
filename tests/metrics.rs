//! Every role's `/metrics`, scraped from a cluster of separate `quarry serve` processes
//! (2 shards, analyzer, generator, evaluator, gateway, found through etcd) before and after
//! known traffic: the counters must move by exactly what that traffic implies, every
//! exposition must pass `promtool check metrics`, and a real Prometheus must scrape them.

mod support;

use std::time::Duration;

use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{AskRequest, SearchMode, SearchRequest};
use support::etcd::Etcd;
use support::prometheus::{promtool_check, scrape, Exposition, PrometheusServer};
use support::{corpus, free_port, Served};
use tonic::transport::Channel;

const CLUSTER: &str = "measured";
const SEARCHES: u32 = 5;
const ASKS: u32 = 3;
const QUESTION: &str = "Who discovered penicillin?";

/// A member and the address of its `/metrics`.
struct Measured {
    served: Served,
    metrics: String,
}

struct MeasuredCluster {
    _etcd: Etcd,
    retrievers: Vec<Measured>,
    analyzer: Measured,
    generator: Measured,
    evaluator: Measured,
    gateway: Measured,
    _data: tempfile::TempDir,
}

async fn start_measured(role: &str, etcd: &Etcd, extra: &[String]) -> Measured {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--etcd".to_string(),
        etcd.endpoint.clone(),
        "--cluster".to_string(),
        CLUSTER.to_string(),
        "--metrics-addr".to_string(),
        metrics.clone(),
    ];
    args.extend(extra.iter().cloned());
    Measured {
        served: Served::start(role, &args).await,
        metrics,
    }
}

impl MeasuredCluster {
    async fn start() -> Self {
        let etcd = Etcd::with_cluster(CLUSTER, 2);
        let data = tempfile::tempdir().unwrap();
        let mut retrievers = Vec::new();
        for shard in 0..2 {
            let extra = [
                "--data-dir".to_string(),
                data.path()
                    .join(format!("shard-{shard}"))
                    .display()
                    .to_string(),
                "--shard".to_string(),
                shard.to_string(),
            ];
            retrievers.push(start_measured("retriever", &etcd, &extra).await);
        }
        let analyzer = start_measured("analyzer", &etcd, &[]).await;
        let generator = start_measured("generator", &etcd, &[]).await;
        let evaluator = start_measured("evaluator", &etcd, &[]).await;
        let gateway = start_measured("gateway", &etcd, &[]).await;
        Self {
            _etcd: etcd,
            retrievers,
            analyzer,
            generator,
            evaluator,
            gateway,
            _data: data,
        }
    }

    fn all(&self) -> Vec<&Measured> {
        let mut all: Vec<&Measured> = self.retrievers.iter().collect();
        all.extend([
            &self.analyzer,
            &self.generator,
            &self.evaluator,
            &self.gateway,
        ]);
        all
    }

    async fn client(&self) -> QuarryClient<Channel> {
        let channel = Channel::from_shared(self.gateway.served.address.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        QuarryClient::new(channel)
    }
}

/// Every member's exposition, checked by promtool.
async fn scrape_all(cluster: &MeasuredCluster) -> Vec<Exposition> {
    let mut expositions = Vec::new();
    for member in cluster.all() {
        let text = scrape(&member.metrics).await;
        promtool_check(&text);
        expositions.push(Exposition::parse(&text));
    }
    expositions
}

/// How much `name{labels}` grew between two scrapes of the same member.
fn delta(before: &Exposition, after: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

const REQUESTS: &str = "quarry_grpc_server_requests_total";
const DURATIONS: &str = "quarry_grpc_server_request_duration_seconds_count";

fn calls(service: &str, method: &str) -> [(&'static str, String); 3] {
    [
        ("service", service.to_string()),
        ("method", method.to_string()),
        ("code", "OK".to_string()),
    ]
}

fn labels<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_counts_what_it_served_and_prometheus_scrapes_it() {
    let cluster = MeasuredCluster::start().await;
    let mut client = cluster.client().await;
    // Index order: retrievers 0 and 1, analyzer, generator, evaluator, gateway.
    let (shard_0, shard_1, analyzer, generator, evaluator, gateway) = (0, 1, 2, 3, 4, 5);
    let before = scrape_all(&cluster).await;

    // Ingest: every document and byte is counted once at the gateway and once at its shard.
    let documents = corpus();
    let bytes: usize = documents
        .iter()
        .map(|document| document.id.len() + document.title.len() + document.text.len())
        .sum();
    let summary = client
        .ingest(tokio_stream::iter(documents.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.accepted, documents.len() as u64);
    let after_ingest = scrape_all(&cluster).await;
    let ingest = |member: usize, name: &str, labels: &[(&str, &str)]| {
        delta(&before[member], &after_ingest[member], name, labels)
    };
    assert_eq!(
        ingest(
            gateway,
            "quarry_gateway_ingest_documents_total",
            &[("outcome", "accepted")]
        ),
        documents.len() as f64
    );
    assert_eq!(
        ingest(gateway, "quarry_gateway_ingest_bytes_total", &[]),
        bytes as f64
    );
    let shard_documents = ingest(shard_0, "quarry_retriever_ingest_documents_total", &[])
        + ingest(shard_1, "quarry_retriever_ingest_documents_total", &[]);
    assert_eq!(shard_documents, documents.len() as f64);
    let shard_bytes = ingest(shard_0, "quarry_retriever_ingest_bytes_total", &[])
        + ingest(shard_1, "quarry_retriever_ingest_bytes_total", &[]);
    assert_eq!(shard_bytes, bytes as f64);
    for shard in [shard_0, shard_1] {
        let written = ingest(shard, "quarry_retriever_ingest_documents_total", &[]);
        let commits = ingest(shard, "quarry_retriever_commit_duration_seconds_count", &[]);
        assert_eq!(commits > 0.0, written > 0.0, "a shard that wrote committed");
    }

    // Keyword searches: one fan-out each, to both shards, then a fetch from the shards that
    // hold the hits; statistics are collected for the first only (the query repeats); the
    // analyzer is not asked.
    let mut fetches_by_shard = [0.0f64; 2];
    for _ in 0..SEARCHES {
        let response = client
            .search(SearchRequest {
                query: "penicillin mould".to_string(),
                k: 3,
                mode: SearchMode::Keyword as i32,
                fusion: 0,
                ..SearchRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.hits[0].doc_id, "penicillin");
        for (shard, fetches) in fetches_by_shard.iter_mut().enumerate() {
            if response.hits.iter().any(|hit| hit.shard == shard as u32) {
                *fetches += 1.0;
            }
        }
    }
    let invalid = client
        .search(SearchRequest {
            query: String::new(),
            ..SearchRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    let after_search = scrape_all(&cluster).await;
    let searched = |member: usize, name: &str, labels: &[(&str, &str)]| {
        delta(&after_ingest[member], &after_search[member], name, labels)
    };
    let searches = f64::from(SEARCHES);
    let quarry_search = calls("quarry.v1.Quarry", "Search");
    assert_eq!(
        searched(gateway, REQUESTS, &labels(&quarry_search)),
        searches
    );
    assert_eq!(
        searched(
            gateway,
            REQUESTS,
            &[("method", "Search"), ("code", "INVALID_ARGUMENT")]
        ),
        1.0
    );
    assert_eq!(
        searched(gateway, DURATIONS, &[("method", "Search")]),
        searches + 1.0
    );
    assert_eq!(
        searched(gateway, "quarry_gateway_fanout_shards_asked_total", &[]),
        2.0 * searches
    );
    assert_eq!(
        searched(gateway, "quarry_gateway_fanout_shards_answered_total", &[]),
        2.0 * searches
    );
    assert_eq!(
        searched(
            gateway,
            "quarry_gateway_shard_call_duration_seconds_count",
            &[]
        ),
        2.0 + 2.0 * searches + fetches_by_shard.iter().sum::<f64>(),
        "statistics once, search every time on each of 2 shards, fetches where the hits are"
    );
    assert_eq!(
        searched(
            gateway,
            "quarry_gateway_statistics_total",
            &[("source", "collected")]
        ),
        1.0
    );
    assert_eq!(
        searched(
            gateway,
            "quarry_gateway_statistics_total",
            &[("source", "cached")]
        ),
        searches - 1.0
    );
    assert_eq!(
        searched(gateway, "quarry_gateway_partial_results_total", &[]),
        0.0
    );
    for (number, shard) in [shard_0, shard_1].into_iter().enumerate() {
        let retriever_search = calls("quarry.v1.Retriever", "Search");
        let retriever_stats = calls("quarry.v1.Retriever", "CollectStats");
        let retriever_fetch = calls("quarry.v1.Retriever", "Fetch");
        assert_eq!(
            searched(shard, REQUESTS, &labels(&retriever_search)),
            searches
        );
        assert_eq!(searched(shard, REQUESTS, &labels(&retriever_stats)), 1.0);
        assert_eq!(
            searched(shard, REQUESTS, &labels(&retriever_fetch)),
            fetches_by_shard[number]
        );
    }
    assert_eq!(searched(analyzer, REQUESTS, &[]), 0.0);

    // Questions: the same one each time, so the analysis cache misses once, then hits.
    for _ in 0..ASKS {
        client
            .ask(AskRequest {
                question: QUESTION.to_string(),
                // Each Ask takes the whole path: none is answered from the cache.
                skip_cache: true,
                ..AskRequest::default()
            })
            .await
            .unwrap();
    }
    let after_ask = scrape_all(&cluster).await;
    let asked = |member: usize, name: &str, labels: &[(&str, &str)]| {
        delta(&after_search[member], &after_ask[member], name, labels)
    };
    let asks = f64::from(ASKS);
    assert_eq!(
        asked(
            gateway,
            REQUESTS,
            &labels(&calls("quarry.v1.Quarry", "Ask"))
        ),
        asks
    );
    assert_eq!(asked(gateway, DURATIONS, &[("method", "Ask")]), asks);
    assert_eq!(
        asked(
            analyzer,
            REQUESTS,
            &labels(&calls("quarry.v1.Analyzer", "Analyze"))
        ),
        asks
    );
    assert_eq!(
        asked(
            analyzer,
            "quarry_analyzer_cache_misses_total",
            &[("cache", "analysis")]
        ),
        1.0
    );
    assert_eq!(
        asked(
            analyzer,
            "quarry_analyzer_cache_hits_total",
            &[("cache", "analysis")]
        ),
        asks - 1.0
    );
    assert!(asked(analyzer, "quarry_analyzer_embedding_batch_size_count", &[]) >= 1.0);
    assert_eq!(
        asked(
            generator,
            REQUESTS,
            &labels(&calls("quarry.v1.Generator", "Generate"))
        ),
        asks
    );
    assert_eq!(
        asked(
            evaluator,
            REQUESTS,
            &labels(&calls("quarry.v1.Evaluator", "Evaluate"))
        ),
        asks
    );
    let fan_outs = asked(gateway, "quarry_gateway_fanout_shards_asked_total", &[]) / 2.0;
    assert!(fan_outs >= asks, "{fan_outs} fan-outs for {asks} questions");
    let shard_searches = asked(
        shard_0,
        REQUESTS,
        &labels(&calls("quarry.v1.Retriever", "Search")),
    );
    assert_eq!(
        shard_searches, fan_outs,
        "each fan-out searched shard 0 once"
    );
    for exposition in &after_ask {
        assert!(exposition.sum("process_resident_memory_bytes", &[]) > 0.0);
        assert!(exposition.sum("quarry_grpc_server_requests_in_flight", &[]) == 0.0);
    }

    // A real Prometheus scrapes every role and sees the same counts.
    let targets: Vec<String> = cluster
        .all()
        .iter()
        .map(|member| member.metrics.clone())
        .collect();
    let prometheus = PrometheusServer::start(&targets);
    let patience = Duration::from_secs(30);
    prometheus
        .wait_for_value("count(up == 1)", targets.len() as f64, patience)
        .await;
    prometheus
        .wait_for_value(
            "sum(quarry_grpc_server_requests_total{service=\"quarry.v1.Quarry\",method=\"Search\",code=\"OK\"})",
            searches,
            patience,
        )
        .await;
    prometheus
        .wait_for_value(
            "sum(quarry_grpc_server_requests_total{service=\"quarry.v1.Retriever\",method=\"Search\"})",
            2.0 * (searches + fan_outs),
            patience,
        )
        .await;
}
