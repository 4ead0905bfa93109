//! `Gateway`: the plain Rust API behind `quarry.v1.Quarry` — configuration plus clients of
//! the other roles. Its operations live in `search`, `ask`, `ingest` and `documents`.

use std::sync::Arc;

use quarry_kit::config::GatewayConfig;

use crate::cluster_clients::ClusterClients;

pub struct Gateway {
    pub(crate) config: GatewayConfig,
    pub(crate) cluster_name: String,
    pub(crate) clients: Arc<ClusterClients>,
}

impl Gateway {
    pub fn new(config: GatewayConfig, cluster_name: String, clients: Arc<ClusterClients>) -> Self {
        Self {
            config,
            cluster_name,
            clients,
        }
    }
}
