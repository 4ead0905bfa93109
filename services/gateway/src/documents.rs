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
use crate::shard_router::shard_for_document;
use crate::validate::validate_id;

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
        let shards = self.clients.shard_count();
        let mut per_shard: Vec<Vec<String>> = (0..shards).map(|_| Vec::new()).collect();
        for id in request.ids {
            per_shard[shard_for_document(&id, shards) as usize].push(id);
        }
        let timeout = deadline.hop(self.shard_timeout());
        let version = self.versions.next();
        let collection_name = collection.as_str();
        let deletes = per_shard
            .into_iter()
            .enumerate()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(shard, ids)| async move {
                let replicas = self.clients.shard_write_replicas(shard as u32);
                if !replicas.iter().any(|replica| replica.ready) {
                    return Err(GatewayError::Unavailable(format!(
                        "shard {shard} has no ready replica"
                    )));
                }
                // Every replica that takes writes applies the delete, all at once.
                let calls = replicas.iter().map(|replica| {
                    let request = ShardDeleteRequest {
                        ids: ids.clone(),
                        version,
                        collection: collection_name.to_string(),
                    };
                    async move {
                        let mut client = self.clients.retriever(replica)?;
                        let response = tokio::time::timeout(timeout, client.delete(request))
                            .await
                            .map_err(|_| {
                                GatewayError::Unavailable(format!("shard {shard} timed out"))
                            })?
                            .map_err(|status| GatewayError::downstream("retriever", status))?;
                        Ok::<u64, GatewayError>(response.into_inner().deleted)
                    }
                });
                let mut deleted = 0;
                for outcome in join_all(calls).await {
                    deleted = deleted.max(outcome?);
                }
                Ok(deleted)
            });
        let mut deleted = 0;
        let mut failure = None;
        for outcome in join_all(deletes).await {
            match outcome {
                Ok(count) => deleted += count,
                Err(error) => failure = Some(error),
            }
        }
        // Some shard may have applied its deletes even when another failed.
        self.record_write(&collection).await;
        match failure {
            Some(error) => Err(error),
            None => Ok(DeleteResponse { deleted }),
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
        let shard = shard_for_document(id, self.clients.shard_count());
        let request = FetchRequest {
            ids: vec![id.to_string()],
            collection: collection.clone(),
        };
        let answer = self
            .shards
            .call(
                shard,
                ShardCall::Fetch(request),
                deadline.hop(self.shard_timeout()),
            )
            .await?;
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
        let shards = self.clients.shard_count();
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
        })
    }
}
