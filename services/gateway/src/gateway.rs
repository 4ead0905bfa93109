//! `Gateway`: the plain Rust API behind `quarry.v1.Quarry` — configuration plus clients of
//! the other roles. Its operations live in `search`, `ask`, `ingest` and `documents`.

use std::sync::Arc;

use quarry_kit::collections::CollectionCatalog;
use quarry_kit::config::{GatewayConfig, RerankConfig};
use quarry_kit::placement::{Placement, PlacementStore};

use crate::answer_cache::AnswerCache;
use crate::cluster_clients::ClusterClients;
use crate::fan_out::StatisticsCache;
use crate::plan::RetrievalPlan;
use crate::rerank::{with_rerank, Reranker};
use crate::shard_client::{GrpcShards, ShardClient};

pub struct Gateway {
    pub(crate) config: GatewayConfig,
    pub(crate) cluster_name: String,
    pub(crate) clients: Arc<ClusterClients>,
    /// Every call to a retriever shard on the query path goes through it.
    pub(crate) shards: ShardClient,
    /// Each shard's BM25 statistics of recent queries (see `fan_out`).
    pub(crate) statistics: StatisticsCache,
    /// Stamps every write (document or delete) with its version.
    pub(crate) versions: quarry_kit::VersionClock,
    /// The collections, and their write generations.
    pub(crate) catalog: Arc<dyn CollectionCatalog>,
    /// Answers and analyses (off until `with_answer_cache`).
    pub(crate) answers: AnswerCache,
    /// The optional rerank stage, and how many candidates it sees and for which calls.
    pub(crate) reranker: Option<Reranker>,
    pub(crate) rerank: RerankConfig,
    /// Which shard owns each partition; every query and write routes by one snapshot.
    pub(crate) placement: Arc<dyn PlacementStore>,
    placement_view: tokio::sync::watch::Receiver<Arc<Placement>>,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        cluster_name: String,
        clients: Arc<ClusterClients>,
        catalog: Arc<dyn CollectionCatalog>,
        placement: Arc<dyn PlacementStore>,
    ) -> Self {
        let shards = ShardClient::new(
            Arc::new(GrpcShards::new(Arc::clone(&clients))),
            config.replica_selection,
            config.hedging,
        );
        Self {
            config,
            cluster_name,
            clients,
            shards,
            statistics: StatisticsCache::default(),
            versions: quarry_kit::VersionClock::default(),
            catalog,
            answers: AnswerCache::off(),
            reranker: None,
            rerank: RerankConfig::default(),
            placement_view: placement.watch(),
            placement,
        }
    }

    /// The placement as this gateway last saw it.
    pub(crate) fn placement_snapshot(&self) -> Arc<Placement> {
        Arc::clone(&self.placement_view.borrow())
    }

    /// A placement at `epoch` or newer: the watch's, or read from the store when the watch
    /// is behind.
    pub(crate) async fn refresh_placement(&self, epoch: u64) -> Arc<Placement> {
        let waited = quarry_kit::placement::wait_for_epoch(
            &self.placement_view,
            epoch,
            std::time::Duration::from_millis(100),
        )
        .await;
        if waited.epoch >= epoch {
            return waited;
        }
        match self.placement.refresh().await {
            Ok(placement) => placement,
            Err(error) => {
                tracing::warn!(error = %error, "could not read the placement");
                waited
            }
        }
    }

    /// Reranks fused candidates as `config` says (nothing for `backend = "off"`).
    pub fn with_reranker(mut self, config: &RerankConfig) -> Result<Self, String> {
        self.reranker = Reranker::from_config(config)?;
        self.rerank = config.clone();
        Ok(self)
    }

    /// The plan, widened for a rerank when one is configured and pays for this call
    /// (`ask`: an Ask; a Search only with `rerank.search`).
    pub(crate) fn plan_rerank(&self, plan: RetrievalPlan, k: u32, ask: bool) -> RetrievalPlan {
        match &self.reranker {
            Some(_) if ask || self.rerank.search => with_rerank(plan, k, self.rerank.candidates),
            _ => plan,
        }
    }

    /// Caches answers and analyses in `cache`.
    pub fn with_answer_cache(mut self, cache: AnswerCache) -> Self {
        self.answers = cache;
        self
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
