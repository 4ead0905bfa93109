//! `GrpcShards`: the `Shards` of a running cluster — ready replicas from discovery, calls
//! through the generated retriever client on the member's cached channel.

use std::sync::Arc;
use std::time::Duration;

use quarry_kit::discovery::Member;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Status};

use super::{ShardCall, ShardReply, Shards};
use crate::cluster_clients::ClusterClients;

pub struct GrpcShards {
    clients: Arc<ClusterClients>,
}

impl GrpcShards {
    pub fn new(clients: Arc<ClusterClients>) -> Self {
        Self { clients }
    }
}

#[tonic::async_trait]
impl Shards for GrpcShards {
    fn shard_count(&self) -> u32 {
        self.clients.shard_count()
    }

    fn replicas(&self, shard: u32) -> Vec<Member> {
        self.clients.shard_replicas(shard)
    }

    async fn call(
        &self,
        replica: &Member,
        call: ShardCall,
        timeout: Duration,
    ) -> Result<ShardReply, Status> {
        let mut client = self
            .clients
            .retriever(replica)
            .map_err(|error| Status::unavailable(error.to_string()))?;
        fn timed<T>(message: T, timeout: Duration) -> Request<T> {
            let mut request = Request::new(message);
            request.set_timeout(timeout);
            request
        }
        Ok(match call {
            ShardCall::CollectStats(request) => ShardReply::CollectStats(
                client
                    .collect_stats(timed(request, timeout))
                    .await?
                    .into_inner(),
            ),
            ShardCall::Search(request) => {
                ShardReply::Search(client.search(timed(*request, timeout)).await?.into_inner())
            }
            // Stored text compresses about threefold (the shard compresses only replies
            // large enough to be worth it); ids and scores (`Search`) hardly at all.
            ShardCall::Fetch(request) => ShardReply::Fetch(
                client
                    .accept_compressed(CompressionEncoding::Zstd)
                    .fetch(timed(request, timeout))
                    .await?
                    .into_inner(),
            ),
            ShardCall::ShardInfo(request) => ShardReply::ShardInfo(
                client
                    .shard_info(timed(request, timeout))
                    .await?
                    .into_inner(),
            ),
        })
    }
}
