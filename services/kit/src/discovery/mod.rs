//! How members of a cluster find each other: a `Discovery` trait with a watchable member
//! set. `StaticDiscovery` serves `quarry up` and hand-wired clusters; `EtcdDiscovery`
//! implements the same trait for real clusters.

mod etcd;
mod role_channels;
mod static_members;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::KitError;

pub use etcd::{create_cluster, read_settings, ClusterSettings, EtcdAccess, EtcdDiscovery};
pub use role_channels::{ChannelError, RoleChannels};
pub use static_members::StaticDiscovery;

/// The roles a Quarry process can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Gateway,
    Analyzer,
    Retriever,
    Generator,
    Evaluator,
    Scheduler,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Gateway,
        Role::Analyzer,
        Role::Retriever,
        Role::Generator,
        Role::Evaluator,
        Role::Scheduler,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Analyzer => "analyzer",
            Role::Retriever => "retriever",
            Role::Generator => "generator",
            Role::Evaluator => "evaluator",
            Role::Scheduler => "scheduler",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = KitError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == name)
            .ok_or_else(|| KitError::Config(format!("unknown role {name:?}")))
    }
}

/// One registered process: what it serves and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    pub role: Role,
    /// `http://host:port` of its gRPC server.
    pub address: String,
    /// Shard and replica, meaningful for retrievers.
    #[serde(default)]
    pub shard: u32,
    #[serde(default)]
    pub replica: u32,
    pub version: String,
    /// Searched: gateways route queries only to ready members.
    pub ready: bool,
    /// A retriever replica catching up on missed writes from a peer: gateways write to it
    /// (so it misses nothing new) but do not search it until it is ready.
    #[serde(default)]
    pub recovering: bool,
    /// Whether its server takes mutual TLS (`internal_tls.mode`), so callers know how to dial.
    #[serde(default)]
    pub internal_tls: crate::config::InternalTlsMode,
}

/// The members known at one moment, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberSet {
    members: Vec<Member>,
}

impl MemberSet {
    pub fn new(mut members: Vec<Member>) -> Self {
        members.sort_by(|left, right| {
            (left.role, left.shard, left.replica, &left.node_id).cmp(&(
                right.role,
                right.shard,
                right.replica,
                &right.node_id,
            ))
        });
        Self { members }
    }

    pub fn all(&self) -> &[Member] {
        &self.members
    }

    /// Ready members of a role.
    pub fn ready(&self, role: Role) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(move |member| member.role == role && member.ready)
    }

    /// Ready replicas of one retriever shard.
    pub fn shard_replicas(&self, shard: u32) -> impl Iterator<Item = &Member> {
        self.ready(Role::Retriever)
            .filter(move |member| member.shard == shard)
    }

    /// The replicas of one shard that take writes: ready ones and those catching up.
    pub fn shard_write_replicas(&self, shard: u32) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |member| {
            member.role == Role::Retriever
                && member.shard == shard
                && (member.ready || member.recovering)
        })
    }
}

/// A source of cluster membership that can be watched for changes.
#[async_trait::async_trait]
pub trait Discovery: Send + Sync + 'static {
    /// Adds or replaces this process's entry (keyed by node id).
    async fn register(&self, member: Member) -> Result<(), KitError>;
    /// Replaces the entry of a member this process registered (its readiness, say),
    /// keeping its registration; a member no longer registered is left out.
    async fn update(&self, member: Member) -> Result<(), KitError>;
    /// Marks the member not ready, then removes it.
    async fn deregister(&self, node_id: &str) -> Result<(), KitError>;
    /// The current member set, updated as members come and go.
    fn watch(&self) -> watch::Receiver<MemberSet>;
    /// The cluster's shard count.
    fn shard_count(&self) -> u32;
}
