//! `quarry serve <role>`: one role in this process. With `--etcd` it registers in etcd and
//! finds the other members there; without, a gateway is told where the other roles are
//! with flags (`--analyzer`, `--retrievers`, ...).

use std::sync::Arc;

use quarry_kit::collections::{CollectionCatalog, EtcdCatalog, LocalCatalog};
use quarry_kit::config::QuarryConfig;
use quarry_kit::discovery::{Discovery, EtcdAccess, EtcdDiscovery, Member, Role, StaticDiscovery};
use quarry_kit::metrics::spawn_metrics_endpoint;
use quarry_kit::server::bind;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::roles::{start_role, Coordination, RoleLaunch};
use quarry_kit::placement::{EtcdPlacement, LocalPlacement, Partitioning, PlacementStore};

pub async fn run_serve(
    role: Role,
    args: &ServeArgs,
    config: QuarryConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let etcd = if config.discovery.etcd.is_empty() {
        None
    } else {
        let access = EtcdAccess::from_config(&config.discovery);
        Some(EtcdDiscovery::connect(&access, &config.cluster, config.discovery.lease_ttl_s).await?)
    };
    let discovery: Arc<dyn Discovery> = match &etcd {
        Some(etcd) => Arc::clone(etcd) as Arc<dyn Discovery>,
        None => {
            let (shards, members) = static_members(args, &config);
            Arc::new(StaticDiscovery::new(shards, members))
        }
    };
    let etcd_catalog = match &etcd {
        Some(etcd) => Some(
            EtcdCatalog::connect(etcd.client(), &config.cluster)
                .await
                .map_err(|error| anyhow::anyhow!("the collection catalog: {error}"))?,
        ),
        None => None,
    };
    let catalog: Arc<dyn CollectionCatalog> = match &etcd_catalog {
        Some(catalog) => Arc::clone(catalog) as Arc<dyn CollectionCatalog>,
        // Roles given each other's addresses share no catalog: only `default` exists.
        None => Arc::new(LocalCatalog::fixed()),
    };
    // The placement: etcd's (a gateway elected there coordinates resizes), or, for roles
    // given each other's addresses, the initial one, fixed.
    let (placement, coordination, etcd_placement) = match &etcd {
        Some(etcd) => {
            let store = EtcdPlacement::connect(
                etcd.client(),
                &config.cluster,
                etcd.settings().partitioning()?,
            )
            .await?;
            (
                Arc::clone(&store) as Arc<dyn PlacementStore>,
                Coordination::Elected(Box::new(etcd.client())),
                Some(store),
            )
        }
        None => {
            let shards = discovery.shard_count();
            let partitioning = Partitioning::new(shards, config.partitions)?;
            let store: Arc<dyn PlacementStore> = Arc::new(LocalPlacement::in_memory(partitioning));
            (store, Coordination::None, None)
        }
    };
    let listener = bind(&config.listen).await?;
    if let Some(metrics_address) = &config.metrics.addr {
        spawn_metrics_endpoint(metrics_address, shutdown.clone()).await?;
    }
    let (_address, task) = start_role(RoleLaunch {
        role,
        config,
        listener,
        discovery,
        catalog,
        placement,
        coordination,
        shutdown,
    })
    .await?;
    let served = task.await?;
    if let Some(catalog) = etcd_catalog {
        catalog.close();
    }
    if let Some(placement) = etcd_placement {
        placement.close();
    }
    if let Some(etcd) = etcd {
        etcd.close();
    }
    served
}

/// The members named on the command line, and the shard count they imply.
fn static_members(args: &ServeArgs, config: &QuarryConfig) -> (u32, Vec<Member>) {
    let member = |role: Role, address: &str, shard: u32| Member {
        node_id: format!("{role}-{shard}-{address}"),
        role,
        address: address.to_string(),
        shard,
        replica: 0,
        version: "static".to_string(),
        ready: true,
        recovering: false,
        internal_tls: Default::default(),
    };
    let mut members = Vec::new();
    let singles = [
        (Role::Analyzer, &args.analyzer),
        (Role::Generator, &args.generator),
        (Role::Evaluator, &args.evaluator),
        (Role::Scheduler, &args.scheduler),
    ];
    for (role, address) in singles {
        if let Some(address) = address {
            members.push(member(role, address, 0));
        }
    }
    for (shard, address) in args.retrievers.iter().enumerate() {
        members.push(member(Role::Retriever, address, shard as u32));
    }
    let shards = if args.retrievers.is_empty() {
        config.shards
    } else {
        args.retrievers.len() as u32
    };
    (shards, members)
}
