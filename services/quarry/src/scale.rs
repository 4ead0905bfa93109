//! Resizing: asking for a shard count (`quarry cluster scale`, `quarry up --shards N`),
//! following the moves, and showing the placement (`quarry cluster status`). The moves
//! themselves are run by the coordinator (`quarry_gateway::coordinator`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quarry_kit::config::QuarryConfig;
use quarry_kit::discovery::EtcdAccess;
use quarry_kit::placement::{plan_moves, EtcdPlacement, Placement, PlacementStore};

use crate::cli::{ClusterScaleArgs, ClusterStatusArgs};

/// How often `--wait` looks at the placement.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// What a scale request did.
#[derive(Debug, PartialEq, Eq)]
pub enum Requested {
    /// The placement now asks for the count; these moves will run.
    Started(usize),
    /// Already there (or, with `--if-growing` / `--if-shrinking`, not that direction).
    Nothing(String),
    /// The same scale is under way already.
    AlreadyRunning,
}

/// Which scales a request makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Only {
    pub growing: bool,
    pub shrinking: bool,
}

/// Asks for `shards` shards: plans the fewest moves and records them in the placement for
/// the coordinator. A scale to another count while one runs is refused.
pub async fn request_scale(
    store: &dyn PlacementStore,
    shards: u32,
    only: Only,
    dry_run: bool,
) -> anyhow::Result<(Requested, Vec<quarry_kit::placement::Move>)> {
    let placement = store.refresh().await?;
    let partitions = placement.partitioning.count();
    if shards == 0 || shards > partitions {
        anyhow::bail!(
            "shards: must be 1 to {partitions} (this cluster has {partitions} partitions, fixed when it was created)"
        );
    }
    let serving = placement.serving_shards().len() as u32;
    if !placement.moves.is_empty() || placement.aborting {
        if placement.target_shards == shards && !placement.aborting {
            return Ok((Requested::AlreadyRunning, Vec::new()));
        }
        anyhow::bail!(
            "a scale to {} shard(s) is under way ({} move(s) left); wait for it or `quarry cluster scale --abort`",
            placement.target_shards,
            placement.moves.len()
        );
    }
    if (only.growing && shards <= serving) || (only.shrinking && shards >= serving) {
        return Ok((
            Requested::Nothing(format!("{serving} shard(s) serve; nothing to do")),
            Vec::new(),
        ));
    }
    let moves = plan_moves(&placement, shards);
    if moves.is_empty() && placement.target_shards == shards {
        return Ok((
            Requested::Nothing(format!("the cluster has {shards} shard(s) already")),
            Vec::new(),
        ));
    }
    if dry_run {
        return Ok((Requested::Started(moves.len()), moves));
    }
    let next = placement.next(|next| {
        next.target_shards = shards;
        next.moves = moves.clone();
    });
    if !store.replace(&placement, &next, None).await? {
        anyhow::bail!("the placement changed while planning (another scale?); try again");
    }
    Ok((Requested::Started(moves.len()), moves))
}

/// Asks the coordinator to roll back the scale under way.
pub async fn request_abort(store: &dyn PlacementStore) -> anyhow::Result<bool> {
    let placement = store.refresh().await?;
    if placement.moves.is_empty() {
        return Ok(false);
    }
    let next = placement.next(|next| next.aborting = true);
    if !store.replace(&placement, &next, None).await? {
        anyhow::bail!("the placement changed meanwhile; try again");
    }
    Ok(true)
}

/// Waits until no move is left, printing each change of progress.
pub async fn wait_settled(store: &dyn PlacementStore) -> anyhow::Result<Arc<Placement>> {
    let mut last = String::new();
    loop {
        let placement = store.refresh().await?;
        if placement.moves.is_empty() && !placement.aborting {
            return Ok(placement);
        }
        let line = progress_line(&placement, store.progress().await.ok().flatten().as_ref());
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

fn progress_line(
    placement: &Placement,
    progress: Option<&quarry_kit::placement::ScaleProgress>,
) -> String {
    let mut line = format!(
        "scaling to {} shard(s): {} move(s) left",
        placement.target_shards,
        placement.moves.len()
    );
    for moving in &placement.moves {
        line.push_str(&format!(
            "; p{} {}->{} {}",
            moving.partition,
            moving.from,
            moving.to,
            moving.phase.as_str()
        ));
        let report = progress.and_then(|progress| {
            progress
                .current
                .iter()
                .find(|report| report.partition == moving.partition)
        });
        if let Some(report) = report {
            line.push_str(&format!(
                " {}/{} docs {:.0}/s",
                report.documents_copied,
                report.documents_total,
                report.rate()
            ));
            if let Some(eta) = report.eta_seconds() {
                line.push_str(&format!(" eta {eta:.0}s"));
            }
        }
    }
    if let Some(error) = progress
        .map(|progress| progress.last_error.as_str())
        .filter(|error| !error.is_empty())
    {
        line.push_str(&format!(" (last error: {error})"));
    }
    line
}

async fn etcd_store(
    config: &QuarryConfig,
    etcd: &[String],
    cluster: &str,
) -> anyhow::Result<Arc<EtcdPlacement>> {
    let access = EtcdAccess::with_endpoints(&config.discovery, etcd.to_vec());
    let mut client = access.connect().await?;
    let settings = quarry_kit::discovery::read_settings(&mut client, cluster).await?;
    Ok(EtcdPlacement::connect(client, cluster, settings.partitioning()?).await?)
}

pub async fn cluster_scale(config: &QuarryConfig, args: &ClusterScaleArgs) -> anyhow::Result<()> {
    let store = etcd_store(config, &args.etcd, &args.cluster)
        .await
        .context("reading the placement")?;
    if args.abort {
        match request_abort(store.as_ref()).await? {
            true => println!("abort requested: moves not cut over roll back"),
            false => println!("no scale is under way"),
        }
    } else {
        let shards = args.shards.unwrap_or_default();
        let only = Only {
            growing: args.if_growing,
            shrinking: args.if_shrinking,
        };
        let (requested, moves) = request_scale(store.as_ref(), shards, only, args.dry_run).await?;
        match requested {
            Requested::Started(count) if args.dry_run => {
                println!("would move {count} partition(s):");
                for moving in moves {
                    println!(
                        "  partition {} from shard {} to shard {}",
                        moving.partition, moving.from, moving.to
                    );
                }
                return Ok(());
            }
            Requested::Started(count) => {
                println!("scaling to {shards} shard(s): {count} partition move(s)")
            }
            Requested::AlreadyRunning => println!("a scale to {shards} shard(s) is under way"),
            Requested::Nothing(reason) => {
                println!("{reason}");
                return Ok(());
            }
        }
    }
    if args.wait {
        let settled = wait_settled(store.as_ref()).await?;
        println!(
            "{} shard(s) serve (placement epoch {})",
            settled.serving_shards().len(),
            settled.epoch
        );
        if let Some(shards) = args.shards {
            if settled.target_shards != shards {
                anyhow::bail!(
                    "the scale to {shards} shard(s) was aborted; {} shard(s) serve",
                    settled.target_shards
                );
            }
        }
    }
    store.close();
    Ok(())
}

pub async fn cluster_status(config: &QuarryConfig, args: &ClusterStatusArgs) -> anyhow::Result<()> {
    let store = etcd_store(config, &args.etcd, &args.cluster).await?;
    let placement = store.refresh().await?;
    let progress = store.progress().await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "placement": placement.as_ref(), "progress": progress })
        );
    } else {
        println!(
            "cluster {}: {} shard(s) serve, target {}, {} partitions, placement epoch {}",
            args.cluster,
            placement.serving_shards().len(),
            placement.target_shards,
            placement.partitioning.count(),
            placement.epoch
        );
        for shard in placement.serving_shards() {
            println!(
                "  shard {shard}: partitions {:?}",
                placement.owned_by(shard)
            );
        }
        if !placement.moves.is_empty() {
            println!("  {}", progress_line(&placement, progress.as_ref()));
        }
    }
    store.close();
    Ok(())
}
