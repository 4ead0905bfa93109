//! Collections on the public API: create, delete, list and get, and how every other rpc
//! finds the collection it names — an empty name is `default`; a bad name is
//! INVALID_ARGUMENT naming `collection`; one the catalog does not have is NOT_FOUND; one the
//! caller's API key is not granted is PERMISSION_DENIED. The catalog (etcd, or the data
//! directory under `quarry up`) is the truth; retrievers follow it and drop a deleted
//! collection's files, including one that was down when it was deleted (on its return).

use futures::future::join_all;
use quarry_kit::collections::{resolve_name, Collection};
use quarry_proto::v1::{
    CollectionInfo, CreateCollectionRequest, DeleteCollectionRequest, DeleteCollectionResponse,
    GetCollectionRequest, ListCollectionsResponse, ShardInfoRequest,
};

use crate::deadline::Deadline;
use crate::error::GatewayError;
use crate::front::CollectionGrant;
use crate::gateway::Gateway;
use crate::shard_client::{ShardAnswer, ShardCall, ShardReply};

impl Gateway {
    /// The collection a request names, checked: valid, granted to the caller, existing.
    pub(crate) fn collection_of(
        &self,
        name: &str,
        grant: Option<&CollectionGrant>,
    ) -> Result<String, GatewayError> {
        let name = resolve_name("collection", name)?;
        check_grant(name, grant)?;
        if self.catalog.snapshot().get(name).is_none() {
            return Err(GatewayError::NotFound(format!(
                "collection: no collection {name:?}"
            )));
        }
        Ok(name.to_string())
    }

    pub async fn create_collection(
        &self,
        request: CreateCollectionRequest,
        grant: Option<&CollectionGrant>,
    ) -> Result<CollectionInfo, GatewayError> {
        check_grant(&request.name, grant)?;
        let created = self
            .catalog
            .create(&request.name, &request.description)
            .await?;
        Ok(self.info(&created))
    }

    /// Deletes the record; every replica then drops the collection's files.
    pub async fn delete_collection(
        &self,
        request: DeleteCollectionRequest,
        grant: Option<&CollectionGrant>,
        deadline: Deadline,
    ) -> Result<DeleteCollectionResponse, GatewayError> {
        let name = self.collection_of(&request.name, grant)?;
        // What it held, for the reply (best effort: a shard that does not answer counts 0).
        let counted = self.count(&name, deadline).await;
        self.catalog.delete(&name).await?;
        Ok(DeleteCollectionResponse {
            deleted_docs: counted.num_docs,
        })
    }

    /// Every collection the caller may use.
    pub fn list_collections(&self, grant: Option<&CollectionGrant>) -> ListCollectionsResponse {
        let snapshot = self.catalog.snapshot();
        ListCollectionsResponse {
            collections: snapshot
                .collections
                .values()
                .filter(|collection| grant.is_none_or(|grant| grant.allows(&collection.name)))
                .map(|collection| self.info(collection))
                .collect(),
        }
    }

    /// A collection's settings and counts, summed over the shards.
    pub async fn get_collection(
        &self,
        request: GetCollectionRequest,
        grant: Option<&CollectionGrant>,
        deadline: Deadline,
    ) -> Result<CollectionInfo, GatewayError> {
        let name = self.collection_of(&request.name, grant)?;
        let snapshot = self.catalog.snapshot();
        let record = snapshot
            .get(&name)
            .ok_or_else(|| GatewayError::NotFound(format!("collection: no collection {name:?}")))?;
        let counted = self.count(&name, deadline).await;
        Ok(CollectionInfo {
            num_docs: counted.num_docs,
            num_vectors: counted.num_vectors,
            shards_unavailable: counted.shards_unavailable,
            ..self.info(record)
        })
    }

    fn info(&self, collection: &Collection) -> CollectionInfo {
        CollectionInfo {
            name: collection.name.clone(),
            description: collection.description.clone(),
            created_at_ms: collection.created_at_ms,
            shards: self.placement_snapshot().serving_shards().len() as u32,
            ..CollectionInfo::default()
        }
    }

    /// Documents and vectors of a collection, one replica per shard.
    pub(crate) async fn count(&self, collection: &str, deadline: Deadline) -> Counted {
        // Each shard counts the partitions it owns (as it sees the placement).
        let shards = self.placement_snapshot().serving_shards();
        let timeout = deadline.hop(self.shard_timeout());
        let infos = shards.into_iter().map(|shard| async move {
            let call = ShardCall::ShardInfo(ShardInfoRequest {
                collection: collection.to_string(),
            });
            match self.shards.call(shard, call, timeout).await {
                Ok(ShardAnswer {
                    reply: ShardReply::ShardInfo(info),
                    ..
                }) => Ok((info.num_docs, info.num_vectors)),
                _ => Err(shard),
            }
        });
        let mut counted = Counted::default();
        for outcome in join_all(infos).await {
            match outcome {
                Ok((docs, vectors)) => {
                    counted.num_docs += docs;
                    counted.num_vectors += vectors;
                }
                Err(shard) => counted.shards_unavailable.push(shard),
            }
        }
        counted
    }

    /// Marks acknowledged writes to a collection, so cached answers built before them are
    /// not served again. A catalog that cannot be reached is logged, not failed: the write
    /// itself is durable.
    pub(crate) async fn record_write(&self, collection: &str) {
        if let Err(error) = self.catalog.record_write(collection).await {
            tracing::warn!(collection, error = %error, "could not record a write's generation");
        }
    }
}

/// Summed shard counts.
#[derive(Debug, Default)]
pub(crate) struct Counted {
    pub num_docs: u64,
    pub num_vectors: u64,
    pub shards_unavailable: Vec<u32>,
}

fn check_grant(name: &str, grant: Option<&CollectionGrant>) -> Result<(), GatewayError> {
    match grant {
        Some(grant) if !grant.allows(name) => Err(GatewayError::PermissionDenied(format!(
            "API key {} may not use collection `{}`",
            grant.key_id,
            name.chars().take(64).collect::<String>()
        ))),
        _ => Ok(()),
    }
}
