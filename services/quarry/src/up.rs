//! `quarry up`: every role in this process on loopback — one analyzer, generator, evaluator
//! and scheduler, `replicas` retrievers per shard, and the gateway on the configured address — found
//! through static in-process discovery, every hop still over gRPC.

use std::sync::Arc;

use anyhow::Context;
use quarry_kit::collections::{CollectionCatalog, LocalCatalog};
use quarry_kit::config::QuarryConfig;
use quarry_kit::discovery::{Discovery, Role, StaticDiscovery};
use quarry_kit::metrics::spawn_metrics_endpoint;
use quarry_kit::server::bind;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::roles::{replica_dir, start_role, Coordination, RoleLaunch};
use quarry_kit::placement::{LocalPlacement, Partitioning, PlacementStore};

/// A cluster running in this process.
pub struct LocalCluster {
    /// `http://` address of the gateway.
    pub gateway_address: String,
    tasks: JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
    /// Which shard owns each partition (kept in the data directory).
    pub placement: Arc<LocalPlacement>,
}

impl LocalCluster {
    /// Starts every role; the gateway listens on `config.listen` (port 0 picks a free one).
    pub async fn start(config: &QuarryConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        // The placement lives in the data directory; a directory made before it (or new)
        // starts with every partition at its block's shard.
        let partitioning = match LocalPlacement::read(&config.data_dir) {
            Some(placement) => placement.partitioning,
            None => existing_partitioning(config)?,
        };
        let placement = Arc::new(LocalPlacement::open(&config.data_dir, partitioning)?);
        let current = placement.refresh().await?;
        // Every shard that holds data or is asked for runs; a resize moves partitions.
        let shards = current.shard_count().max(config.shards);
        let discovery: Arc<dyn Discovery> = Arc::new(StaticDiscovery::new(shards, Vec::new()));
        // One process: the collections are kept in the data directory.
        let catalog: Arc<dyn CollectionCatalog> = Arc::new(
            LocalCatalog::open(&config.data_dir)
                .map_err(|error| anyhow::anyhow!("the collection catalog: {error}"))?,
        );
        let mut launches = Vec::new();
        for role in [
            Role::Analyzer,
            Role::Generator,
            Role::Evaluator,
            Role::Scheduler,
        ] {
            launches.push((role, config.clone(), "127.0.0.1:0".to_string()));
        }
        for shard in 0..shards {
            for replica in 0..config.replicas.max(1) {
                let mut retriever_config = config.clone();
                retriever_config.retriever.shard = shard;
                retriever_config.retriever.replica = replica;
                launches.push((Role::Retriever, retriever_config, "127.0.0.1:0".to_string()));
            }
        }
        launches.push((Role::Gateway, config.clone(), config.listen.clone()));
        let mut cluster = Self {
            gateway_address: String::new(),
            tasks: JoinSet::new(),
            shutdown: shutdown.clone(),
            placement: Arc::clone(&placement),
        };
        for (role, mut role_config, listen) in launches {
            if role == Role::Gateway {
                // The gateway's health stands for the cluster: it serves once every shard
                // has a replica that caught up (replicas started together exchange writes
                // first, which takes a settle of `retriever.recovery_settle_ms`).
                wait_for_ready_shards(discovery.as_ref(), shards).await;
            }
            // One process: the gateway's health stands for every role, and several roles
            // cannot share one plaintext health port.
            role_config.internal_tls.health_listen = None;
            let listener = bind(&listen).await?;
            // Listening on every interface (in a container, say): the roles of this process
            // dial each other on loopback.
            let local = listener.local_addr()?;
            if local.ip().is_unspecified() && role_config.advertise.is_none() {
                let loopback: std::net::IpAddr = match local {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                };
                role_config.advertise =
                    Some(std::net::SocketAddr::new(loopback, local.port()).to_string());
            }
            let (address, task) = start_role(RoleLaunch {
                role,
                config: role_config,
                listener,
                discovery: Arc::clone(&discovery),
                catalog: Arc::clone(&catalog),
                placement: Arc::clone(&placement) as Arc<dyn PlacementStore>,
                coordination: Coordination::Local,
                shutdown: shutdown.clone(),
            })
            .await?;
            info!(role = %role, address, "role started");
            if role == Role::Gateway {
                cluster.gateway_address = address;
            }
            cluster.tasks.spawn(flatten(task));
        }
        // `--shards` other than the count serving: resize, as `quarry cluster scale` does.
        let serving = current.serving_shards().len() as u32;
        if config.shards != serving || !current.moves.is_empty() {
            let (requested, moves) = crate::scale::request_scale(
                placement.as_ref(),
                config.shards,
                crate::scale::Only::default(),
                false,
            )
            .await?;
            info!(
                from = serving,
                to = config.shards,
                moves = moves.len(),
                ?requested,
                "resizing"
            );
        }
        Ok(cluster)
    }

    /// Waits until every role has stopped; the first failure stops the others.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(finished) = self.tasks.join_next().await {
            let outcome = finished
                .map_err(anyhow::Error::from)
                .and_then(|served| served);
            if let Err(error) = outcome {
                self.shutdown.cancel();
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Stops every role gracefully and waits for them.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

pub async fn run_up(config: QuarryConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(metrics_address) = &config.metrics.addr {
        spawn_metrics_endpoint(metrics_address, shutdown.clone()).await?;
    }
    let cluster = LocalCluster::start(&config, shutdown).await?;
    info!(
        gateway = cluster.gateway_address,
        shards = config.shards,
        data_dir = %config.data_dir.display(),
        "quarry is up"
    );
    eprintln!(
        "quarry up: gateway on {}, {} shard(s), data in {}",
        cluster.gateway_address,
        config.shards,
        config.data_dir.display()
    );
    cluster.wait().await
}

/// Waits (at most a minute) until every shard below `shards` has a ready replica.
async fn wait_for_ready_shards(discovery: &dyn Discovery, shards: u32) {
    let mut members = discovery.watch();
    let all_ready = |set: &quarry_kit::discovery::MemberSet| {
        (0..shards).all(|shard| set.shard_replicas(shard).next().is_some())
    };
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        members.wait_for(|set| all_ready(set)),
    )
    .await;
    if waited.is_err() {
        tracing::warn!(
            "some shard has no ready replica after a minute; starting the gateway anyway"
        );
    }
}

/// The partitioning of a data directory without a placement: the shard count its replicas
/// were made for (they recorded it), else a new cluster's from the configuration.
fn existing_partitioning(config: &QuarryConfig) -> anyhow::Result<Partitioning> {
    let recorded =
        std::fs::read_to_string(replica_dir(&config.data_dir, 0, 0).join("cluster.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    if let Some(recorded) = recorded {
        if let Some(partitioning) = recorded.get("partitioning") {
            return Ok(serde_json::from_value(partitioning.clone())?);
        }
        if let Some(shards) = recorded["shards"].as_u64() {
            return Ok(Partitioning::new(shards as u32, None)?);
        }
    }
    Ok(Partitioning::new(config.shards, config.partitions)?)
}

async fn flatten(task: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    task.await?
}
