//! The placement in etcd: the record at `/quarry/<cluster>/placement` (absent until the first
//! change: then every partition is at its block's shard), replaced only by a transaction
//! that compares the stored record (and, for a coordinator, that its election key still
//! stands); the coordinator's progress at `/quarry/<cluster>/placement/progress`. Readers
//! get the record, then watch the key from that revision, reading again after any break.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Fence, Partitioning, Placement, PlacementStore, ScaleProgress};
use crate::error::KitError;

const RETRY_PAUSE: Duration = Duration::from_millis(500);

pub fn placement_key(cluster: &str) -> String {
    format!("/quarry/{cluster}/placement")
}

fn progress_key(cluster: &str) -> String {
    format!("/quarry/{cluster}/placement/progress")
}

fn etcd_error(error: etcd_client::Error) -> KitError {
    KitError::Discovery(format!("etcd placement: {error}"))
}

pub struct EtcdPlacement {
    client: Client,
    cluster: String,
    partitioning: Partitioning,
    sender: watch::Sender<Arc<Placement>>,
    stop: CancellationToken,
}

impl EtcdPlacement {
    /// Reads the placement, then follows it in the background until `close`.
    pub async fn connect(
        client: Client,
        cluster: &str,
        partitioning: Partitioning,
    ) -> Result<Arc<Self>, KitError> {
        let (sender, _) = watch::channel(Arc::new(Placement::initial(partitioning)));
        let store = Arc::new(Self {
            client,
            cluster: cluster.to_string(),
            partitioning,
            sender,
            stop: CancellationToken::new(),
        });
        let (placement, _) = store.read().await?;
        store.publish(placement);
        tokio::spawn(Arc::clone(&store).follow());
        Ok(store)
    }

    pub fn close(&self) {
        self.stop.cancel();
    }

    /// The stored placement (or the initial one) and the revision it was read at.
    async fn read(&self) -> Result<(Placement, i64), KitError> {
        let mut client = self.client.clone();
        let response = client
            .get(placement_key(&self.cluster), None)
            .await
            .map_err(etcd_error)?;
        let revision = response.header().map_or(0, |header| header.revision());
        let placement = match response.kvs().first() {
            Some(entry) => self.decode(entry.value())?,
            None => Placement::initial(self.partitioning),
        };
        Ok((placement, revision))
    }

    fn decode(&self, bytes: &[u8]) -> Result<Placement, KitError> {
        serde_json::from_slice(bytes).map_err(|error| {
            KitError::Discovery(format!(
                "bad placement at {}: {error}",
                placement_key(&self.cluster)
            ))
        })
    }

    /// Publishes a placement newer than the one shown.
    fn publish(&self, placement: Placement) {
        self.sender.send_if_modified(|current| {
            if placement.epoch <= current.epoch {
                return false;
            }
            *current = Arc::new(placement);
            true
        });
    }

    async fn follow(self: Arc<Self>) {
        while !self.stop.is_cancelled() {
            if let Err(error) = self.read_then_watch().await {
                warn!(error = %error, "placement watch broken; keeping the last placement");
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        }
    }

    async fn read_then_watch(&self) -> Result<(), KitError> {
        let (placement, revision) = self.read().await?;
        self.publish(placement);
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let mut stream = client
            .watch(placement_key(&self.cluster), Some(options))
            .await
            .map_err(etcd_error)?;
        loop {
            let response = tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                message = stream.message() => message.map_err(etcd_error)?,
            };
            let Some(response) = response else {
                return Err(KitError::Discovery("etcd closed the watch".to_string()));
            };
            if response.compact_revision() > 0 || response.canceled() {
                info!("placement watch restarted after compaction");
                return Ok(());
            }
            for event in response.events() {
                if event.event_type() != EventType::Put {
                    continue;
                }
                if let Some(entry) = event.kv() {
                    match self.decode(entry.value()) {
                        Ok(placement) => self.publish(placement),
                        Err(error) => warn!(error = %error, "ignoring a bad placement record"),
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl PlacementStore for EtcdPlacement {
    fn watch(&self) -> watch::Receiver<Arc<Placement>> {
        self.sender.subscribe()
    }

    async fn refresh(&self) -> Result<Arc<Placement>, KitError> {
        let (placement, _) = self.read().await?;
        self.publish(placement);
        Ok(Arc::clone(&self.sender.borrow()))
    }

    async fn replace(
        &self,
        expected: &Placement,
        next: &Placement,
        fence: Option<&Fence>,
    ) -> Result<bool, KitError> {
        let key = placement_key(&self.cluster);
        let encode = |placement: &Placement| {
            serde_json::to_string(placement).map_err(|error| KitError::Config(error.to_string()))
        };
        let mut client = self.client.clone();
        let stored = client.get(key.as_str(), None).await.map_err(etcd_error)?;
        let unchanged = match stored.kvs().first() {
            None => {
                if *expected != Placement::initial(self.partitioning) {
                    return Ok(false);
                }
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
            }
            Some(entry) => {
                if self.decode(entry.value())? != *expected {
                    return Ok(false);
                }
                Compare::mod_revision(key.as_str(), CompareOp::Equal, entry.mod_revision())
            }
        };
        let mut conditions = vec![unchanged];
        if let Some(fence) = fence {
            conditions.push(Compare::create_revision(
                fence.key.clone(),
                CompareOp::Equal,
                fence.revision,
            ));
        }
        let replaced = client
            .txn(Txn::new().when(conditions).and_then([TxnOp::put(
                key.as_str(),
                encode(next)?,
                None,
            )]))
            .await
            .map_err(etcd_error)?
            .succeeded();
        if replaced {
            self.publish(next.clone());
        }
        Ok(replaced)
    }

    async fn put_progress(&self, progress: &ScaleProgress) -> Result<(), KitError> {
        let value =
            serde_json::to_string(progress).map_err(|error| KitError::Config(error.to_string()))?;
        let mut client = self.client.clone();
        client
            .put(progress_key(&self.cluster), value, None)
            .await
            .map_err(etcd_error)?;
        Ok(())
    }

    async fn progress(&self) -> Result<Option<ScaleProgress>, KitError> {
        let mut client = self.client.clone();
        let response = client
            .get(progress_key(&self.cluster), None)
            .await
            .map_err(etcd_error)?;
        Ok(response
            .kvs()
            .first()
            .and_then(|entry| serde_json::from_slice(entry.value()).ok()))
    }
}
