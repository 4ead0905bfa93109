//! `Delete`, `GetDocument` and `ClusterStatus`: single-document operations routed to the
//! document's shard, and the cluster's member list with each shard's document count.

use futures::future::join_all;
use quarry_proto::v1::{
    ClusterStatusResponse, DeleteRequest, DeleteResponse, Document, FetchRequest, Member,
    ShardDeleteRequest,
};

use crate::deadline::Deadline;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::shard_client::{ShardAnswer, ShardCall, ShardReply};
use crate::shard_router::shard_for_document;
use crate::validate::validate_id;

/// Most ids one `Delete` may name.
const MAX_DELETE_IDS: usize = 10_000;

impl Gateway {
    pub async fn delete(
        &self,
        request: DeleteRequest,
        deadline: Deadline,
    ) -> Result<DeleteResponse, GatewayError> {
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
        for outcome in join_all(deletes).await {
            deleted += outcome?;
        }
        Ok(DeleteResponse { deleted })
    }

    pub async fn get_document(
        &self,
        id: &str,
        deadline: Deadline,
    ) -> Result<Document, GatewayError> {
        validate_id(id, &self.config)?;
        let shard = shard_for_document(id, self.clients.shard_count());
        let request = FetchRequest {
            ids: vec![id.to_string()],
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
        fetched
            .documents
            .into_iter()
            .next()
            .ok_or_else(|| GatewayError::NotFound(format!("id: no document {id:?}")))
    }

    pub async fn cluster_status(
        &self,
        deadline: Deadline,
    ) -> Result<ClusterStatusResponse, GatewayError> {
        let members = self.clients.members();
        let shards = self.clients.shard_count();
        let timeout = deadline.hop(self.shard_timeout());
        let infos = (0..shards).map(|shard| async move {
            match self.shards.call(shard, ShardCall::ShardInfo, timeout).await {
                Ok(ShardAnswer {
                    reply: ShardReply::ShardInfo(info),
                    ..
                }) => Ok((info.num_docs, info.num_vectors)),
                _ => Err(shard),
            }
        });
        let mut num_docs = 0;
        let mut num_vectors = 0;
        let mut shards_unavailable = Vec::new();
        for outcome in join_all(infos).await {
            match outcome {
                Ok((docs, vectors)) => {
                    num_docs += docs;
                    num_vectors += vectors;
                }
                Err(shard) => shards_unavailable.push(shard),
            }
        }
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
            shards_unavailable,
            num_docs,
            num_vectors,
        })
    }
}
