//! Clients of the other roles, built from the live member set: one lazily connected channel
//! per member address, reused across calls; role instances taken in turn, shard replicas
//! listed for the fan-out to try in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use quarry_kit::discovery::{Discovery, Member, MemberSet, Role};
use quarry_kit::server::lazy_channel;
use quarry_proto::v1::analyzer_client::AnalyzerClient;
use quarry_proto::v1::evaluator_client::EvaluatorClient;
use quarry_proto::v1::generator_client::GeneratorClient;
use quarry_proto::v1::retriever_client::RetrieverClient;
use quarry_proto::v1::scheduler_client::SchedulerClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::error::GatewayError;

/// Channels to every member the gateway talks to.
pub struct ClusterClients {
    discovery: Arc<dyn Discovery>,
    members: watch::Receiver<MemberSet>,
    channels: Mutex<HashMap<String, Channel>>,
    next_instance: AtomicUsize,
    max_message_bytes: usize,
}

impl ClusterClients {
    pub fn new(discovery: Arc<dyn Discovery>, max_message_bytes: usize) -> Self {
        let members = discovery.watch();
        Self {
            discovery,
            members,
            channels: Mutex::new(HashMap::new()),
            next_instance: AtomicUsize::new(0),
            max_message_bytes,
        }
    }

    pub fn shard_count(&self) -> u32 {
        self.discovery.shard_count()
    }

    /// The member set as it is now.
    pub fn members(&self) -> MemberSet {
        self.members.borrow().clone()
    }

    /// Ready replicas of a shard, in a stable order.
    pub fn shard_replicas(&self, shard: u32) -> Vec<Member> {
        self.members
            .borrow()
            .shard_replicas(shard)
            .cloned()
            .collect()
    }

    pub fn analyzer(&self) -> Result<AnalyzerClient<Channel>, GatewayError> {
        let channel = self.instance_channel(Role::Analyzer)?;
        Ok(AnalyzerClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub fn generator(&self) -> Result<GeneratorClient<Channel>, GatewayError> {
        let channel = self.instance_channel(Role::Generator)?;
        Ok(GeneratorClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub fn evaluator(&self) -> Result<EvaluatorClient<Channel>, GatewayError> {
        let channel = self.instance_channel(Role::Evaluator)?;
        Ok(EvaluatorClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub fn scheduler(&self) -> Result<SchedulerClient<Channel>, GatewayError> {
        let channel = self.instance_channel(Role::Scheduler)?;
        Ok(SchedulerClient::new(channel))
    }

    pub fn retriever(&self, member: &Member) -> Result<RetrieverClient<Channel>, GatewayError> {
        let channel = self.channel(&member.address)?;
        Ok(RetrieverClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    fn instance_channel(&self, role: Role) -> Result<Channel, GatewayError> {
        let address = {
            let members = self.members.borrow();
            let ready: Vec<&Member> = members.ready(role).collect();
            if ready.is_empty() {
                return Err(GatewayError::NoMember {
                    role: role.as_str(),
                });
            }
            let turn = self.next_instance.fetch_add(1, Ordering::Relaxed);
            ready[turn % ready.len()].address.clone()
        };
        self.channel(&address)
    }

    fn channel(&self, address: &str) -> Result<Channel, GatewayError> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| GatewayError::Internal("channel cache lock poisoned".to_string()))?;
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel =
            lazy_channel(address).map_err(|error| GatewayError::Internal(error.to_string()))?;
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}
