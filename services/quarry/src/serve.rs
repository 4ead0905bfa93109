//! `quarry serve <role>`: one role in this process. Until etcd discovery lands, a gateway is
//! told where the other roles are with flags (`--analyzer`, `--retrievers`, ...).

use std::sync::Arc;

use quarry_kit::config::QuarryConfig;
use quarry_kit::discovery::{Discovery, Member, Role, StaticDiscovery};
use quarry_kit::server::bind;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::roles::{start_role, RoleLaunch};

pub async fn run_serve(
    role: Role,
    args: &ServeArgs,
    config: QuarryConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (shards, members) = static_members(args, &config);
    let discovery: Arc<dyn Discovery> = Arc::new(StaticDiscovery::new(shards, members));
    let listener = bind(&config.listen).await?;
    let (_address, task) = start_role(RoleLaunch {
        role,
        config,
        listener,
        discovery,
        shutdown,
    })
    .await?;
    task.await?
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
