//! Importing a partition onto this replica while the placement moves it here: for every
//! collection, the peer catch-up of `recovery.rs` against a ready replica of the source
//! shard, scoped to the one partition and one way (ids, versions, tombstones, vectors;
//! nothing re-embedded). The source lists only once its placement shows the import (so it
//! refuses writes routed before it, which would bypass this replica) and every write in
//! progress has committed; live writes reach both meanwhile. A second pass after a settle
//! catches what crossed the first; versions make both idempotent, so an import cut short
//! (a coordinator, source or target killed) is simply run again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use quarry_kit::discovery::Discovery;
use quarry_proto::v1::{ImportPartitionRequest, ImportProgress};
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{info, warn};

use crate::collections::ShardCollections;
use crate::error::RetrieverError;
use crate::recovery::{catch_up, peer_client, CatchUpReport, PassScope, RecoveryOptions};

/// Imports partitions onto this replica, one import per partition at a time.
pub struct Importer {
    collections: Arc<ShardCollections>,
    discovery: Arc<dyn Discovery>,
    options: RecoveryOptions,
    running: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
}

impl Importer {
    pub fn new(
        collections: Arc<ShardCollections>,
        discovery: Arc<dyn Discovery>,
        options: RecoveryOptions,
    ) -> Self {
        Self {
            collections,
            discovery,
            options,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Starts an import on its own task (a caller that goes away does not cut it short: it
    /// is idempotent, and one runs per partition at a time); its progress, then its
    /// outcome, arrive on the returned channel.
    pub fn start(
        self: Arc<Self>,
        request: ImportPartitionRequest,
    ) -> mpsc::Receiver<Result<ImportProgress, Status>> {
        let (progress, mut updates) = mpsc::channel(64);
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            let import = self.import(
                request.partition,
                request.source_shard,
                request.epoch,
                progress,
            );
            tokio::pin!(import);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut import => break outcome,
                    Some(update) = updates.recv() => {
                        let _ = sender.try_send(Ok(update));
                    }
                }
            };
            while let Ok(update) = updates.try_recv() {
                let _ = sender.try_send(Ok(update));
            }
            if let Err(error) = outcome {
                let _ = sender.send(Err(Status::from(error))).await;
            }
        });
        receiver
    }

    /// Copies `partition` from `source_shard`, reporting progress on `progress`; checks first
    /// that the placement (at `epoch` or later) has this shard importing it.
    pub async fn import(
        &self,
        partition: u32,
        source_shard: u32,
        epoch: u64,
        progress: mpsc::Sender<ImportProgress>,
    ) -> Result<CatchUpReport, RetrieverError> {
        let shard = self.collections.shard();
        let placement = self.collections.placement_at_least(epoch).await;
        let importing = placement.move_of(partition).is_some_and(|moving| {
            moving.to == shard
                && moving.from == source_shard
                && matches!(
                    moving.phase,
                    quarry_kit::placement::Phase::Importing | quarry_kit::placement::Phase::Copying
                )
        });
        if !importing {
            return Err(RetrieverError::Moved {
                epoch: placement.epoch,
                message: format!(
                    "shard {shard} is not importing partition {partition} from shard {source_shard} at placement epoch {}",
                    placement.epoch
                ),
            });
        }
        let lock = self
            .running
            .lock()
            .map_err(|_| RetrieverError::Internal("import lock poisoned".to_string()))?
            .entry(partition)
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        let copied = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let report_now = {
            let (copied, bytes, total, progress) = (
                Arc::clone(&copied),
                Arc::clone(&bytes),
                Arc::clone(&total),
                progress.clone(),
            );
            move |done: bool| {
                let _ = progress.try_send(ImportProgress {
                    documents_copied: copied.load(Ordering::Relaxed),
                    deletes_copied: 0,
                    bytes_copied: bytes.load(Ordering::Relaxed),
                    documents_total: total.load(Ordering::Relaxed),
                    done,
                });
            }
        };
        let on_copied = {
            let (copied, bytes, report_now) =
                (Arc::clone(&copied), Arc::clone(&bytes), report_now.clone());
            move |documents: u64, batch_bytes: u64| {
                copied.fetch_add(documents, Ordering::Relaxed);
                bytes.fetch_add(batch_bytes, Ordering::Relaxed);
                report_now(false);
            }
        };
        let mut report = CatchUpReport::default();
        for pass in 0..2 {
            let pass_report = self
                .pass(partition, source_shard, epoch, &on_copied)
                .await?;
            if pass == 0 {
                total.store(pass_report.listed, Ordering::Relaxed);
                tokio::time::sleep(self.options.import_settle).await;
            }
            report.copied += pass_report.copied;
            report.deleted += pass_report.deleted;
            report.bytes += pass_report.bytes;
        }
        report_now(true);
        info!(
            shard,
            replica = self.collections.replica(),
            partition,
            source_shard,
            copied = report.copied,
            deleted = report.deleted,
            bytes = report.bytes,
            "partition imported"
        );
        Ok(report)
    }

    /// One pass over every collection, from the first ready source replica that answers.
    async fn pass(
        &self,
        partition: u32,
        source_shard: u32,
        epoch: u64,
        on_copied: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<CatchUpReport, RetrieverError> {
        let sources: Vec<_> = self
            .discovery
            .watch()
            .borrow()
            .shard_replicas(source_shard)
            .cloned()
            .collect();
        let mut last_error = RetrieverError::Unavailable(format!(
            "shard {source_shard} has no ready replica to import partition {partition} from"
        ));
        for source in sources {
            let outcome = async {
                let mut client = peer_client(&source, self.options.internal_tls.as_deref())?;
                let mut report = CatchUpReport::default();
                for collection in self.collections.names() {
                    let index = self.collections.get(&collection).await?;
                    let part = index.get_or_create_async(partition).await?;
                    let scope = PassScope {
                        collection: &collection,
                        partition: Some(partition),
                        min_epoch: epoch,
                        push: false,
                    };
                    let collection_report = catch_up(
                        &part,
                        &mut client,
                        &source.address,
                        scope,
                        self.options.call_timeout,
                        Some(on_copied),
                    )
                    .await?;
                    report.copied += collection_report.copied;
                    report.deleted += collection_report.deleted;
                    report.bytes += collection_report.bytes;
                    report.listed += collection_report.listed;
                }
                Ok::<_, RetrieverError>(report)
            }
            .await;
            match outcome {
                Ok(report) => return Ok(report),
                Err(error) => {
                    warn!(source = %source.address, partition, error = %error, "importing from a source replica failed");
                    last_error = error;
                }
            }
        }
        Err(last_error)
    }
}
