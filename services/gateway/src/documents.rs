//! `Delete`, `GetDocument` and `ClusterStatus`: single-document operations routed to the
//! document's shard, and the cluster's member list with each shard's document count.

use futures::future::join_all;
use quarry_proto::v1::{
    ClusterStatusResponse, DeleteRequest, DeleteResponse, Document, FetchRequest,
    GetDocumentRequest, Member, ShardDeleteRequest,
};

use crate::deadline::Deadline;
use crate::error::GatewayError;
use crate::front::CollectionGrant;
use crate::gateway::Gateway;
use crate::shard_client::{ShardCall, ShardReply};
use crate::validate::validate_id;

/// Tries of a delete or a get with a newer placement after a shard moved past the last.
const MAX_PLACEMENT_TRIES: u32 = 5;
/// Most ids one `Delete` may name.
const MAX_DELETE_IDS: usize = 10_000;

impl Gateway {
    pub async fn delete(
        &self,
        request: DeleteRequest,
        grant: Option<&CollectionGrant>,
        deadline: Deadline,
    ) -> Result<DeleteResponse, GatewayError> {
        let collection = self.collection_of(&request.collection, grant)?;
        if request.ids.is_empty() {
            return Err(GatewayError::invalid("ids", "must name at least one id"));
        }
        if request.ids.len() > MAX_DELETE_IDS {
            return Err(GatewayError::invalid(
                "ids",
                format!("at most {MAX_DELETE_IDS} ids"),
            ));
        }
        for id in &request.ids {
            validate_id(id, &self.config)?;
        }
        let timeout = deadline.hop(self.shard_timeout());
        let version = self.versions.next();
        let mut waiting = request.ids;
        let mut placement = self.placement_snapshot();
        let mut deleted = 0;
        let mut failure = None;
        // Routed like writes: each id to its partition's writers; ids refused by a shard
        // that moved past the snapshot go again under a newer one (same version).
        for attempt in 1..=MAX_PLACEMENT_TRIES {
            let mut per_shard: std::collections::BTreeMap<u32, (Vec<String>, bool)> =
                Default::default();
            for id in &waiting {
                let partition = placement.partition_of(id);
                for writer in placement.writers(partition) {
                    let entry = per_shard.entry(writer).or_default();
                    entry.0.push(id.clone());
                    // Deletes are counted where the partition is owned, not where imported.
                    entry.1 |= placement.owner(partition) == Some(writer);
                }
            }
            let epoch = placement.epoch;
            let deletes = per_shard.iter().map(|(shard, (ids, _))| {
                self.delete_on_shard(&collection, *shard, ids, version, epoch, timeout)
            });
            let outcomes = join_all(deletes).await;
            let mut moved = None;
            let mut again = std::collections::BTreeSet::new();
            for ((shard, (ids, _)), outcome) in per_shard.iter().zip(outcomes) {
                match outcome {
                    Ok(count) => {
                        // An owner shard counts only the ids it owns.
                        let owned = ids
                            .iter()
                            .all(|id| placement.owner(placement.partition_of(id)) == Some(*shard));
                        if owned {
                            deleted += count;
                        }
                    }
                    Err(GatewayError::Moved { epoch, .. }) if attempt < MAX_PLACEMENT_TRIES => {
                        moved = moved.max(Some(epoch));
                        again.extend(ids.iter().cloned());
                    }
                    Err(error) => failure = Some(error),
                }
            }
            waiting = again.into_iter().collect();
            match moved {
                Some(epoch) if !waiting.is_empty() => {
                    placement = self.refresh_placement(epoch).await;
                }
                _ => break,
            }
        }
        // Some shard may have applied its deletes even when another failed.
        self.record_write(&collection).await;
        match failure {
            Some(error) => Err(error),
            None => Ok(DeleteResponse { deleted }),
        }
    }

    /// Deletes `ids` on every replica of `shard` that takes writes; the most any replica
    /// found present.
    async fn delete_on_shard(
        &self,
        collection: &str,
        shard: u32,
        ids: &[String],
        version: u64,
        placement_epoch: u64,
        timeout: std::time::Duration,
    ) -> Result<u64, GatewayError> {
        let replicas = self.clients.shard_write_replicas(shard);
        if !replicas.iter().any(|replica| replica.ready) {
            return Err(GatewayError::Unavailable(format!(
                "shard {shard} has no ready replica"
            )));
        }
        // Every replica that takes writes applies the delete, all at once.
        let calls = replicas.iter().map(|replica| {
            let request = ShardDeleteRequest {
                ids: ids.to_vec(),
                version,
                collection: collection.to_string(),
                placement_epoch,
            };
            async move {
                let mut client = self.clients.retriever(replica)?;
                let response = tokio::time::timeout(timeout, client.delete(request))
                    .await
                    .map_err(|_| GatewayError::Unavailable(format!("shard {shard} timed out")))?
                    .map_err(|status| {
                        GatewayError::moved(&status)
                            .unwrap_or_else(|| GatewayError::downstream("retriever", status))
                    })?;
                Ok::<u64, GatewayError>(response.into_inner().deleted)
            }
        });
        let mut deleted = 0;
        let mut failure = None;
        for outcome in join_all(calls).await {
            match outcome {
                Ok(count) => deleted = deleted.max(count),
                Err(error @ GatewayError::Moved { .. }) => failure = Some(error),
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(deleted),
        }
    }

    pub async fn get_document(
        &self,
        request: GetDocumentRequest,
        grant: Option<&CollectionGrant>,
        deadline: Deadline,
    ) -> Result<Document, GatewayError> {
        let collection = self.collection_of(&request.collection, grant)?;
        let id = request.id.as_str();
        validate_id(id, &self.config)?;
        let mut placement = self.placement_snapshot();
        let timeout = deadline.hop(self.shard_timeout());
        let mut tries = 0;
        let answer = loop {
            tries += 1;
            let partition = placement.partition_of(id);
            let shard = placement.owner(partition).unwrap_or_default();
            let request = FetchRequest {
                ids: vec![id.to_string()],
                collection: collection.clone(),
                placement_epoch: placement.epoch,
            };
            match self
                .shards
                .call(shard, ShardCall::Fetch(request), timeout)
                .await
            {
                Err(GatewayError::Moved { epoch, .. }) if tries < MAX_PLACEMENT_TRIES => {
                    placement = self.refresh_placement(epoch).await;
                }
                outcome => break outcome?,
            }
        };
        let ShardReply::Fetch(fetched) = answer.reply else {
            return Err(GatewayError::Internal(
                "fetch answered another rpc".to_string(),
            ));
        };
        let mut document = fetched.documents.into_iter().next().ok_or_else(|| {
            GatewayError::NotFound(format!(
                "id: no document {id:?} in collection {collection:?}"
            ))
        })?;
        document.collection = collection;
        Ok(document)
    }

    pub async fn cluster_status(
        &self,
        deadline: Deadline,
    ) -> Result<ClusterStatusResponse, GatewayError> {
        let members = self.clients.members();
        let placement = self.placement_snapshot();
        let shards = placement.shard_count();
        let progress = match placement.moves.is_empty() {
            true => None,
            false => self.placement.progress().await.ok().flatten(),
        };
        let counted = self
            .count(quarry_kit::collections::DEFAULT_COLLECTION, deadline)
            .await;
        Ok(ClusterStatusResponse {
            cluster: self.cluster_name.clone(),
            shards,
            members: members
                .all()
                .iter()
                .map(|member| Member {
                    node_id: member.node_id.clone(),
                    role: member.role.as_str().to_string(),
                    address: member.address.clone(),
                    shard: member.shard,
                    replica: member.replica,
                    ready: member.ready,
                    recovering: member.recovering,
                    version: member.version.clone(),
                })
                .collect(),
            shards_unavailable: counted.shards_unavailable,
            num_docs: counted.num_docs,
            num_vectors: counted.num_vectors,
            placement: Some(placement_to_proto(&placement, progress.as_ref())),
        })
    }
}

/// The placement as `ClusterStatus` reports it, with each move's progress when known.
fn placement_to_proto(
    placement: &quarry_kit::placement::Placement,
    progress: Option<&quarry_kit::placement::ScaleProgress>,
) -> quarry_proto::v1::Placement {
    let reported = |partition: u32| {
        progress.and_then(|progress| {
            progress
                .current
                .iter()
                .find(|moving| moving.partition == partition)
        })
    };
    quarry_proto::v1::Placement {
        epoch: placement.epoch,
        partitions: placement.partitioning.count(),
        owners: placement.owners.clone(),
        target_shards: placement.target_shards,
        moves: placement
            .moves
            .iter()
            .map(|moving| {
                let report = reported(moving.partition);
                quarry_proto::v1::PartitionMove {
                    partition: moving.partition,
                    from_shard: moving.from,
                    to_shard: moving.to,
                    phase: moving.phase.as_str().to_string(),
                    documents_copied: report.map_or(0, |report| report.documents_copied),
                    documents_total: report.map_or(0, |report| report.documents_total),
                    bytes_copied: report.map_or(0, |report| report.bytes_copied),
                    rate: report.map_or(0.0, |report| report.rate()),
                    eta_seconds: report
                        .and_then(|report| report.eta_seconds())
                        .unwrap_or_default(),
                }
            })
            .collect(),
        aborting: placement.aborting,
    }
}
