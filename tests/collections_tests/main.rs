//! Collections, metadata filters, the answer cache and the rerank stage across processes:
//! `quarry serve` processes found through a real etcd, a real Redis, and the local
//! model-protocol server for the reranker.
//!
//! One test binary, a module per capability: `collections` (independence, deletion while a
//! replica is down), `filters` (200 random filters against a brute-force reference on 1 and
//! 3 shards), `cache` (hits, invalidation by writes, two gateways sharing Redis, Redis
//! killed mid-run), `rerank` (the reranker's order applied; a failing reranker falls back).

#[path = "../support/mod.rs"]
mod support;

mod cache;
mod collections;
mod filters;
mod rerank;

use std::time::{Duration, Instant};

use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::ClusterStatusRequest;
use support::etcd::Etcd;
use support::Served;
use tonic::transport::Channel;

const CLUSTER: &str = "collections";
/// The test-only feature-hashing encoder: deterministic, no model to load.
const FAST_ENCODER: (&str, &str) = ("QUARRY_ANALYZER__ENCODER", "hash");

/// A cluster of separate processes: retrievers (shard × replica), an analyzer, and
/// gateways; a generator and an evaluator when it answers questions.
pub struct TestCluster {
    pub etcd: Etcd,
    /// shard → replicas
    pub retrievers: Vec<Vec<Served>>,
    pub others: Vec<Served>,
    pub gateways: Vec<Served>,
    pub data: tempfile::TempDir,
}

/// What to start.
pub struct ClusterShape<'a> {
    pub shards: u32,
    pub replicas: u32,
    pub gateways: usize,
    /// Start a generator and an evaluator (for Ask).
    pub answers: bool,
    /// Environment of every gateway (`QUARRY_CACHE__REDIS_URL`, ...).
    pub gateway_env: Vec<(&'a str, String)>,
    /// Flags of each gateway (`--metrics-addr`, ...), by position.
    pub gateway_flags: Vec<Vec<String>>,
}

impl Default for ClusterShape<'_> {
    fn default() -> Self {
        Self {
            shards: 1,
            replicas: 1,
            gateways: 1,
            answers: false,
            gateway_env: Vec::new(),
            gateway_flags: Vec::new(),
        }
    }
}

pub fn member_args(etcd: &Etcd) -> Vec<String> {
    vec![
        "--etcd".into(),
        etcd.endpoint.clone(),
        "--cluster".into(),
        CLUSTER.into(),
    ]
}

impl TestCluster {
    pub async fn start(shape: ClusterShape<'_>) -> Self {
        let etcd = Etcd::with_cluster(CLUSTER, shape.shards);
        let data = tempfile::tempdir().unwrap();
        let mut retrievers = Vec::new();
        for shard in 0..shape.shards {
            let mut replicas = Vec::new();
            for replica in 0..shape.replicas {
                let mut args = member_args(&etcd);
                args.extend([
                    "--data-dir".to_string(),
                    data.path().join("retrievers").display().to_string(),
                    "--shard".to_string(),
                    shard.to_string(),
                    "--replica".to_string(),
                    replica.to_string(),
                ]);
                replicas.push(Served::start("retriever", &args).await);
            }
            retrievers.push(replicas);
        }
        let mut others =
            vec![Served::start_with_env("analyzer", &member_args(&etcd), &[FAST_ENCODER]).await];
        if shape.answers {
            for role in ["generator", "evaluator"] {
                others.push(Served::start(role, &member_args(&etcd)).await);
            }
        }
        let env: Vec<(&str, &str)> = shape
            .gateway_env
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let mut gateways = Vec::new();
        for position in 0..shape.gateways {
            let mut args = member_args(&etcd);
            if let Some(flags) = shape.gateway_flags.get(position) {
                args.extend(flags.iter().cloned());
            }
            gateways.push(Served::start_with_env("gateway", &args, &env).await);
        }
        let members =
            retrievers.iter().map(Vec::len).sum::<usize>() + others.len() + gateways.len();
        let cluster = Self {
            etcd,
            retrievers,
            others,
            gateways,
            data,
        };
        cluster.wait_for_ready(members).await;
        cluster
    }

    pub async fn client(&self, gateway: usize) -> QuarryClient<Channel> {
        let channel = Channel::from_shared(self.gateways[gateway].address.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        QuarryClient::new(channel).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Waits until `count` members are ready.
    pub async fn wait_for_ready(&self, count: usize) {
        let started = Instant::now();
        let mut client = self.client(0).await;
        loop {
            let status = client
                .cluster_status(ClusterStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            let ready = status.members.iter().filter(|member| member.ready).count();
            if ready == count {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{ready} of {count} members ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where a retriever replica keeps its shard.
    pub fn replica_dir(&self, shard: u32, replica: u32) -> std::path::PathBuf {
        self.data
            .path()
            .join("retrievers")
            .join(format!("shard-{shard}-replica-{replica}"))
    }
}

/// Polls `condition` every 50 ms until it holds, or fails after `patience` naming `what`.
pub async fn wait_until<F, Fut>(patience: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < patience,
            "not within {patience:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
