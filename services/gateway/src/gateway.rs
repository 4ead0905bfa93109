//! `Gateway`: the plain Rust API behind `quarry.v1.Quarry` — configuration plus clients of
//! the other roles. Its operations live in `search`, `ask`, `ingest` and `documents`.

use std::sync::Arc;

use quarry_kit::config::GatewayConfig;

use crate::cluster_clients::ClusterClients;
use crate::replica_selector::ReplicaSelector;

pub struct Gateway {
    pub(crate) config: GatewayConfig,
    pub(crate) cluster_name: String,
    pub(crate) clients: Arc<ClusterClients>,
    pub(crate) selector: ReplicaSelector,
    /// Stamps every write (document or delete) with its version.
    pub(crate) versions: quarry_kit::VersionClock,
}

impl Gateway {
    pub fn new(config: GatewayConfig, cluster_name: String, clients: Arc<ClusterClients>) -> Self {
        let selector = ReplicaSelector::new(config.replica_selection);
        Self {
            config,
            cluster_name,
            clients,
            selector,
            versions: quarry_kit::VersionClock::default(),
        }
    }
}

impl Gateway {
    /// Deadline of one shard call.
    pub(crate) fn shard_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.config.shard_timeout_ms)
    }

    /// Limit of one call to the analyzer, generator or evaluator.
    pub(crate) fn hop_limit(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.config.shard_timeout_ms.saturating_mul(3))
    }
}
