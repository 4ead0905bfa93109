//! `quarry up`: every role in this process on loopback — one analyzer, generator, evaluator
//! and scheduler, one retriever per shard, and the gateway on the configured address — found
//! through static in-process discovery, every hop still over gRPC.

use std::sync::Arc;

use anyhow::Context;
use quarry_kit::config::QuarryConfig;
use quarry_kit::discovery::{Discovery, Role, StaticDiscovery};
use quarry_kit::server::bind;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::roles::{start_role, RoleLaunch};

pub async fn run_up(config: QuarryConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let discovery: Arc<dyn Discovery> = Arc::new(StaticDiscovery::new(config.shards, Vec::new()));
    let mut launches = Vec::new();
    for role in [
        Role::Analyzer,
        Role::Generator,
        Role::Evaluator,
        Role::Scheduler,
    ] {
        launches.push((role, config.clone()));
    }
    for shard in 0..config.shards {
        let mut retriever_config = config.clone();
        retriever_config.retriever.shard = shard;
        retriever_config.retriever.replica = 0;
        launches.push((Role::Retriever, retriever_config));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (role, role_config) in launches {
        let listener = bind("127.0.0.1:0").await?;
        let (address, task) = start_role(RoleLaunch {
            role,
            config: role_config,
            listener,
            discovery: Arc::clone(&discovery),
            shutdown: shutdown.clone(),
        })
        .await?;
        info!(role = %role, address, "role started");
        tasks.spawn(flatten(task));
    }
    let gateway_listener = bind(&config.listen).await?;
    let (gateway_address, gateway_task) = start_role(RoleLaunch {
        role: Role::Gateway,
        config: config.clone(),
        listener: gateway_listener,
        discovery: Arc::clone(&discovery),
        shutdown: shutdown.clone(),
    })
    .await?;
    tasks.spawn(flatten(gateway_task));
    info!(
        gateway = gateway_address,
        shards = config.shards,
        data_dir = %config.data_dir.display(),
        "quarry is up"
    );
    eprintln!(
        "quarry up: gateway on {gateway_address}, {} shard(s), data in {}",
        config.shards,
        config.data_dir.display()
    );
    let mut first_error = None;
    while let Some(finished) = tasks.join_next().await {
        let outcome = finished
            .map_err(anyhow::Error::from)
            .and_then(|served| served);
        if let Err(error) = outcome {
            shutdown.cancel();
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

async fn flatten(task: tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    task.await?
}
