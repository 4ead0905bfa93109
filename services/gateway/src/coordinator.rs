//! The placement coordinator: runs a resize's moves through their phases (see
//! `quarry_kit::placement`). One runs at a time: every gateway campaigns in the etcd
//! election `/quarry/<cluster>/placement/coordinator`, and the leader's placement writes are
//! fenced by its election key; under `quarry up` the one gateway coordinates.
//!
//! Every phase is written to the placement before it is acted on, so a coordinator that
//! dies anywhere leaves a record the next one resumes from: `Planned` moves start importing,
//! `Importing`/`Copying` ones (re)run the copy — idempotent by versions — `Dropping` ones
//! finish. An abort rolls back every move not cut over (its target drops the partial copy)
//! and finishes the rest. Moves run in batches: one placement change starts a batch, one
//! cuts it over.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quarry_kit::placement::{
    Fence, Move, MoveProgress, Phase, Placement, PlacementStore, ScaleProgress,
};
use quarry_proto::v1::ImportPartitionRequest;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster_clients::ClusterClients;
use crate::error::GatewayError;

/// Moves copied at once.
const BATCH: usize = 8;
/// How long a source keeps a partition after the cut-over for queries holding an older
/// snapshot (they are told to route again after it).
const DROP_GRACE: Duration = Duration::from_millis(500);
/// Pause before trying a failed step again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often progress is reported while copying.
const REPORT_EVERY: Duration = Duration::from_millis(500);

pub struct Coordinator {
    store: Arc<dyn PlacementStore>,
    clients: Arc<ClusterClients>,
    fence: Option<Fence>,
    progress: Mutex<ScaleProgress>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Coordinator {
    pub fn new(
        store: Arc<dyn PlacementStore>,
        clients: Arc<ClusterClients>,
        fence: Option<Fence>,
    ) -> Self {
        Self {
            store,
            clients,
            fence,
            progress: Mutex::new(ScaleProgress::default()),
        }
    }

    /// Drives every scale until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut watch = self.store.watch();
        while !stop.is_cancelled() {
            let placement = Arc::clone(&watch.borrow_and_update());
            if placement.moves.is_empty() && !placement.aborting {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = watch.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
                continue;
            }
            let step = tokio::select! {
                _ = stop.cancelled() => return,
                step = self.step(&placement) => step,
            };
            if let Err(error) = step {
                warn!(error = %error, "placement step failed; retrying");
                self.report(|progress| progress.last_error = error.to_string())
                    .await;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                }
            }
        }
    }

    /// One step of the scale `placement` records.
    async fn step(&self, placement: &Placement) -> Result<(), GatewayError> {
        if placement.aborting {
            return self.abort(placement).await;
        }
        // Moves cut over finish first; then the batch in flight; then a new batch.
        if placement
            .moves
            .iter()
            .any(|moving| moving.phase == Phase::Dropping)
        {
            tokio::time::sleep(DROP_GRACE).await;
            let done: Vec<u32> = placement
                .moves
                .iter()
                .filter(|moving| moving.phase == Phase::Dropping)
                .map(|moving| moving.partition)
                .collect();
            let finished = self
                .replace(placement, |next| {
                    next.moves
                        .retain(|moving| !done.contains(&moving.partition));
                })
                .await?;
            let total = self.progress_totals(&finished);
            self.report(|progress| {
                progress.moves_done = total.0;
                progress.moves_total = total.1;
                progress.current.clear();
            })
            .await;
            if finished.moves.is_empty() {
                info!(
                    shards = finished.target_shards,
                    epoch = finished.epoch,
                    "scale finished"
                );
            }
            return Ok(());
        }
        let copying: Vec<Move> = placement
            .moves
            .iter()
            .filter(|moving| matches!(moving.phase, Phase::Importing | Phase::Copying))
            .copied()
            .collect();
        if copying.is_empty() {
            let batch: Vec<u32> = placement
                .moves
                .iter()
                .filter(|moving| moving.phase == Phase::Planned)
                .take(BATCH)
                .map(|moving| moving.partition)
                .collect();
            for partition in &batch {
                let to = placement.move_of(*partition).map(|moving| moving.to);
                if let Some(to) = to {
                    if self.clients.shard_replicas(to).is_empty() {
                        return Err(GatewayError::Unavailable(format!(
                            "shard {to} has no ready replica yet; waiting to move partition {partition} onto it"
                        )));
                    }
                }
            }
            self.replace(placement, |next| {
                for moving in &mut next.moves {
                    if batch.contains(&moving.partition) {
                        moving.phase = Phase::Importing;
                    }
                }
            })
            .await?;
            return Ok(());
        }
        if copying
            .iter()
            .any(|moving| moving.phase == Phase::Importing)
        {
            let started: Vec<u32> = copying.iter().map(|moving| moving.partition).collect();
            self.replace(placement, |next| {
                for moving in &mut next.moves {
                    if started.contains(&moving.partition) {
                        moving.phase = Phase::Copying;
                    }
                }
            })
            .await?;
            return Ok(());
        }
        self.copy(placement, &copying).await?;
        let moved: Vec<u32> = copying.iter().map(|moving| moving.partition).collect();
        // The cut-over: one placement change hands every copied partition to its target.
        let cut = self
            .replace(placement, |next| {
                for moving in &mut next.moves {
                    if moved.contains(&moving.partition) {
                        moving.phase = Phase::Dropping;
                        next.owners[moving.partition as usize] = moving.to;
                    }
                }
            })
            .await?;
        info!(partitions = ?moved, epoch = cut.epoch, "partitions cut over");
        Ok(())
    }

    /// Copies every move of the batch onto every replica of its target, at once.
    async fn copy(&self, placement: &Placement, batch: &[Move]) -> Result<(), GatewayError> {
        let started = now_ms();
        let reports: Arc<Mutex<BTreeMap<u32, MoveProgress>>> = Arc::new(Mutex::new(
            batch
                .iter()
                .map(|moving| {
                    let progress = MoveProgress {
                        partition: moving.partition,
                        from: moving.from,
                        to: moving.to,
                        phase: Phase::Copying.as_str().to_string(),
                        started_ms: started,
                        updated_ms: started,
                        ..MoveProgress::default()
                    };
                    (moving.partition, progress)
                })
                .collect(),
        ));
        let imports = batch.iter().flat_map(|moving| {
            let reports = Arc::clone(&reports);
            let replicas = self.clients.shard_write_replicas(moving.to);
            let epoch = placement.writers_since(moving.partition);
            let first = replicas.first().map(|replica| replica.node_id.clone());
            replicas.into_iter().map(move |replica| {
                let reports = Arc::clone(&reports);
                let counts = first.as_deref() == Some(replica.node_id.as_str());
                let moving = *moving;
                async move {
                    let mut client = self.clients.retriever(&replica)?;
                    let request = ImportPartitionRequest {
                        partition: moving.partition,
                        source_shard: moving.from,
                        epoch,
                    };
                    let mut stream = client
                        .import_partition(request)
                        .await
                        .map_err(|status| GatewayError::downstream("retriever", status))?
                        .into_inner();
                    let mut done = false;
                    while let Some(update) = stream
                        .message()
                        .await
                        .map_err(|status| GatewayError::downstream("retriever", status))?
                    {
                        done |= update.done;
                        if counts {
                            if let Ok(mut reports) = reports.lock() {
                                if let Some(report) = reports.get_mut(&moving.partition) {
                                    report.documents_copied = update.documents_copied;
                                    report.bytes_copied = update.bytes_copied;
                                    report.documents_total = update.documents_total;
                                    report.updated_ms = now_ms();
                                }
                            }
                        }
                    }
                    match done {
                        true => Ok(()),
                        false => Err(GatewayError::Unavailable(format!(
                            "shard {} replica {} ended the import of partition {} unfinished",
                            moving.to, replica.replica, moving.partition
                        ))),
                    }
                }
            })
        });
        let imports = futures::future::join_all(imports);
        tokio::pin!(imports);
        let outcomes = loop {
            tokio::select! {
                outcomes = &mut imports => break outcomes,
                _ = tokio::time::sleep(REPORT_EVERY) => {
                    let current: Vec<MoveProgress> = reports
                        .lock()
                        .map(|reports| reports.values().cloned().collect())
                        .unwrap_or_default();
                    self.report(|progress| progress.current = current).await;
                }
            }
        };
        if batch
            .iter()
            .any(|moving| self.clients.shard_write_replicas(moving.to).is_empty())
        {
            return Err(GatewayError::Unavailable(
                "a target shard has no replica".to_string(),
            ));
        }
        for outcome in outcomes {
            outcome?;
        }
        let current: Vec<MoveProgress> = reports
            .lock()
            .map(|reports| reports.values().cloned().collect())
            .unwrap_or_default();
        self.report(|progress| progress.current = current).await;
        Ok(())
    }

    /// Rolls back every move not cut over, finishes the others, and settles the target at
    /// the shards that own partitions.
    async fn abort(&self, placement: &Placement) -> Result<(), GatewayError> {
        if placement
            .moves
            .iter()
            .any(|moving| moving.phase == Phase::Dropping)
        {
            tokio::time::sleep(DROP_GRACE).await;
        }
        let settled = self
            .replace(placement, |next| {
                next.moves.clear();
                next.aborting = false;
                next.target_shards = next.serving_shards().len() as u32;
            })
            .await?;
        info!(shards = settled.target_shards, "scale aborted");
        self.report(|progress| {
            progress.current.clear();
            progress.target_shards = settled.target_shards;
        })
        .await;
        Ok(())
    }

    /// Moves done and in all of the scale under way, as far as the placement tells.
    fn progress_totals(&self, placement: &Placement) -> (u32, u32) {
        let total = self
            .progress
            .lock()
            .map(|progress| progress.moves_total)
            .unwrap_or_default()
            .max(placement.moves.len() as u32);
        (total - placement.moves.len() as u32, total)
    }

    /// Replaces the placement with `change` applied; conflicts (another writer first, or
    /// this coordinator deposed) are errors the loop retries from the newer placement.
    async fn replace(
        &self,
        placement: &Placement,
        change: impl FnOnce(&mut Placement),
    ) -> Result<Placement, GatewayError> {
        let next = placement.next(change);
        let replaced = self
            .store
            .replace(placement, &next, self.fence.as_ref())
            .await
            .map_err(|error| GatewayError::Unavailable(error.to_string()))?;
        if !replaced {
            self.store
                .refresh()
                .await
                .map_err(|error| GatewayError::Unavailable(error.to_string()))?;
            return Err(GatewayError::Unavailable(
                "the placement changed meanwhile (or this coordinator was deposed)".to_string(),
            ));
        }
        Ok(next)
    }

    async fn report(&self, change: impl FnOnce(&mut ScaleProgress)) {
        let snapshot = match self.progress.lock() {
            Ok(mut progress) => {
                let placement = self.store.watch().borrow().clone();
                progress.target_shards = placement.target_shards;
                progress.moves_total = progress
                    .moves_total
                    .max(placement.moves.len() as u32 + progress.moves_done);
                change(&mut progress);
                progress.clone()
            }
            Err(_) => return,
        };
        if let Err(error) = self.store.put_progress(&snapshot).await {
            warn!(error = %error, "could not report the scale's progress");
        }
    }
}

/// Campaigns in the coordinator election and coordinates while elected, until `stop`.
pub async fn coordinate_while_elected(
    election: quarry_kit::election::Election,
    store: Arc<dyn PlacementStore>,
    clients: Arc<ClusterClients>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let term = match election.campaign(&stop).await {
            Ok(term) => term,
            Err(error) => {
                if !stop.is_cancelled() {
                    warn!(error = %error, "coordinator campaign failed; retrying");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_PAUSE) => continue,
                }
            }
        };
        let fence = Fence {
            key: term.key.clone(),
            revision: term.revision,
        };
        let coordinator = Coordinator::new(Arc::clone(&store), Arc::clone(&clients), Some(fence));
        let leading = term.lost.child_token();
        tokio::select! {
            _ = stop.cancelled() => leading.cancel(),
            _ = coordinator.run(leading.clone()) => {}
        }
        term.resign().await;
    }
}
