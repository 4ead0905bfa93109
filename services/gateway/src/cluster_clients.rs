//! Clients of the other roles, built from the live member set through
//! `quarry_kit::discovery::RoleChannels`: one lazily connected channel per member address,
//! reused across calls; role instances taken in turn, shard replicas listed for the fan-out
//! to try in order.

use std::sync::Arc;

use quarry_kit::discovery::{ChannelError, Discovery, Member, MemberSet, Role, RoleChannels};
use quarry_kit::telemetry::TracedChannel;
use quarry_proto::v1::analyzer_client::AnalyzerClient;
use quarry_proto::v1::evaluator_client::EvaluatorClient;
use quarry_proto::v1::generator_client::GeneratorClient;
use quarry_proto::v1::retriever_client::RetrieverClient;
use quarry_proto::v1::scheduler_client::SchedulerClient;

use crate::error::GatewayError;

/// Channels to every member the gateway talks to.
pub struct ClusterClients {
    channels: RoleChannels,
    max_message_bytes: usize,
}

impl ClusterClients {
    pub fn new(discovery: Arc<dyn Discovery>, max_message_bytes: usize) -> Self {
        Self {
            channels: RoleChannels::new(discovery),
            max_message_bytes,
        }
    }

    /// Dials the other roles with mutual TLS when `client` is set (`internal_tls`).
    pub fn with_internal_tls(
        mut self,
        client: Option<Arc<quarry_kit::mtls::InternalTlsClient>>,
    ) -> Self {
        self.channels = self.channels.with_internal_tls(client);
        self
    }

    pub fn shard_count(&self) -> u32 {
        self.channels.discovery().shard_count()
    }

    /// The member set as it is now.
    pub fn members(&self) -> MemberSet {
        self.channels.members()
    }

    /// Ready replicas of a shard, in a stable order.
    pub fn shard_replicas(&self, shard: u32) -> Vec<Member> {
        self.channels
            .members()
            .shard_replicas(shard)
            .cloned()
            .collect()
    }

    /// Replicas of a shard that take writes: ready ones and those catching up from a peer.
    pub fn shard_write_replicas(&self, shard: u32) -> Vec<Member> {
        self.channels
            .members()
            .shard_write_replicas(shard)
            .cloned()
            .collect()
    }

    pub fn analyzer(&self) -> Result<AnalyzerClient<TracedChannel>, GatewayError> {
        let channel = self.instance_channel(Role::Analyzer)?;
        Ok(AnalyzerClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub fn generator(&self) -> Result<GeneratorClient<TracedChannel>, GatewayError> {
        let channel = self.instance_channel(Role::Generator)?;
        Ok(GeneratorClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub fn evaluator(&self) -> Result<EvaluatorClient<TracedChannel>, GatewayError> {
        let channel = self.instance_channel(Role::Evaluator)?;
        Ok(EvaluatorClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub fn scheduler(&self) -> Result<SchedulerClient<TracedChannel>, GatewayError> {
        let channel = self.instance_channel(Role::Scheduler)?;
        Ok(SchedulerClient::new(channel))
    }

    pub fn retriever(
        &self,
        member: &Member,
    ) -> Result<RetrieverClient<TracedChannel>, GatewayError> {
        let channel = self.channel(&member.address)?;
        Ok(RetrieverClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    fn instance_channel(&self, role: Role) -> Result<TracedChannel, GatewayError> {
        self.channels.pick(role).map_err(channel_error)
    }

    fn channel(&self, address: &str) -> Result<TracedChannel, GatewayError> {
        self.channels.channel(address).map_err(channel_error)
    }
}

fn channel_error(error: ChannelError) -> GatewayError {
    match error {
        ChannelError::NoMember { role } => GatewayError::NoMember {
            role: role.as_str(),
        },
        other => GatewayError::Internal(other.to_string()),
    }
}
