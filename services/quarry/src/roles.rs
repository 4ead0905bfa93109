//! Starting one role: build its service with the server-wide message limits, register it in
//! discovery, and serve it until shutdown, when it deregisters first, then drains, and a
//! retriever saves its vector index.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::codec::CompressionEncoding;

use anyhow::Context;
use quarry_analyzer::{
    AnalyzerService, BatchOptions, Encoder, HashEncoder, LlmAnalyzer, OnnxEncoder, OnnxOptions,
    OpenAiEncoder,
};
use quarry_evaluator::{AnalyzerEmbedder, EvaluatorService};
use quarry_gateway::coordinator::{coordinate_while_elected, Coordinator};
use quarry_gateway::front::FrontDoorLayer;
use quarry_gateway::{AnswerCache, ClusterClients, Gateway, QuarryService};
use quarry_generator::GeneratorService;
use quarry_kit::collections::CollectionCatalog;
use quarry_kit::config::{EncoderKind, InternalTlsMode, QuarryConfig};
use quarry_kit::discovery::{Discovery, Member, Role, RoleChannels};
use quarry_kit::mtls::{InternalTlsClient, InternalTlsServer};
use quarry_kit::placement::PlacementStore;
use quarry_kit::server::{dial_address, serve, RoleServer};
use quarry_kit::tls::{CertFiles, ReloadingCert};
use quarry_proto::v1::analyzer_server::AnalyzerServer;
use quarry_proto::v1::evaluator_server::EvaluatorServer;
use quarry_proto::v1::generator_server::GeneratorServer;
use quarry_proto::v1::quarry_server::QuarryServer;
use quarry_proto::v1::retriever_server::RetrieverServer;
use quarry_proto::v1::scheduler_server::SchedulerServer;
#[cfg(feature = "test-hooks")]
use quarry_retriever::InjectedFault;
use quarry_retriever::{recover, Importer, RecoveryOptions, RetrieverService, ShardCollections};
use quarry_scheduler::{SchedulerNode, SchedulerService};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tower::Layer;

/// How long a stopping scheduler may take to resign its leadership.
const SCHEDULER_STOP_PATIENCE: Duration = Duration::from_secs(3);

/// Dimensions of the test-only hash encoder.
const HASH_ENCODER_DIMENSIONS: usize = 384;

/// One role, bound and ready to serve.
pub struct RoleLaunch {
    pub role: Role,
    pub config: QuarryConfig,
    pub listener: TcpListener,
    pub discovery: Arc<dyn Discovery>,
    /// The collections: etcd's, the data directory's (`quarry up`), or only `default`.
    pub catalog: Arc<dyn CollectionCatalog>,
    /// Which shard owns each partition: etcd's, the data directory's, or fixed.
    pub placement: Arc<dyn PlacementStore>,
    /// Whether a gateway coordinates resizes.
    pub coordination: Coordination,
    pub shutdown: CancellationToken,
}

/// Who runs the placement coordinator.
#[derive(Clone)]
pub enum Coordination {
    /// Nobody: roles given each other's addresses have a fixed placement.
    None,
    /// This process's gateway, alone (`quarry up`).
    Local,
    /// The gateway elected in etcd.
    Elected(Box<etcd_client::Client>),
}

/// Where a retriever keeps a shard replica under the data directory.
pub fn replica_dir(data_dir: &std::path::Path, shard: u32, replica: u32) -> PathBuf {
    data_dir.join(format!("shard-{shard}-replica-{replica}"))
}

/// Registers the role and serves it on a task; the task ends after a graceful drain.
pub async fn start_role(
    launch: RoleLaunch,
) -> anyhow::Result<(String, JoinHandle<anyhow::Result<()>>)> {
    let RoleLaunch {
        role,
        config,
        listener,
        discovery,
        catalog,
        placement,
        coordination,
        shutdown,
    } = launch;
    let local_address = listener.local_addr().context("listener address")?;
    if role == Role::Gateway {
        crate::front_door::check_exposure(&config, local_address)?;
    }
    let scheme = match role == Role::Gateway && config.tls.enabled() {
        true => "https",
        false => "http",
    };
    let address = match &config.advertise {
        Some(advertise) if advertise.starts_with("http") => advertise.clone(),
        Some(advertise) => format!("{scheme}://{advertise}"),
        None if local_address.ip().is_unspecified() => {
            anyhow::bail!("listening on {local_address}: set --advertise to the address other members should dial")
        }
        None if scheme == "https" => format!("https://{local_address}"),
        None => dial_address(local_address),
    };
    let BuiltRole {
        role_server,
        shard,
        replica,
        stored_shard,
        scheduler,
    } = build_role(
        role,
        &config,
        Arc::clone(&discovery),
        catalog,
        Placed {
            store: placement,
            coordination,
        },
        &address,
        &shutdown,
    )
    .await?;
    // A retriever replica joins recovering: written to, not searched, until it caught up.
    let recovering = stored_shard.is_some();
    let member = Member {
        node_id: format!("{role}-{}", address.trim_start_matches("http://")),
        role,
        address: address.clone(),
        shard,
        replica,
        version: env!("CARGO_PKG_VERSION").to_string(),
        ready: !recovering,
        recovering,
        // The gateway serves the public API (its own TLS), never internal mutual TLS.
        internal_tls: match role {
            Role::Gateway => InternalTlsMode::Off,
            _ => config.internal_tls.mode,
        },
    };
    let node_id = member.node_id.clone();
    discovery.register(member.clone()).await?;
    if let Some(shard) = &stored_shard {
        let (shard, discovery) = (Arc::clone(shard), Arc::clone(&discovery));
        let options = recovery_options(&config)?;
        tokio::spawn(async move {
            if let Err(error) = recover(shard, discovery, member, options).await {
                tracing::error!(error = %error, "replica recovery failed; the replica is not served");
            }
        });
    }
    let server_config = config.server.clone();
    let task = tokio::spawn(async move {
        let drained = CancellationToken::new();
        let stop_serving = drained.clone();
        let deregister = {
            let discovery = Arc::clone(&discovery);
            async move {
                shutdown.cancelled().await;
                let _ = discovery.deregister(&node_id).await;
                stop_serving.cancel();
            }
        };
        let serving = serve(listener, role_server, &server_config, drained);
        let (served, ()) = tokio::join!(serving, deregister);
        if let Some(stored_shard) = stored_shard {
            tokio::task::spawn_blocking(move || {
                stored_shard
                    .opened_all()
                    .iter()
                    .try_for_each(|collection| collection.persist_vectors())
            })
            .await??;
        }
        if let Some(scheduler) = scheduler {
            // A leader resigns before the process exits, so a standby takes over at once.
            let _ = tokio::time::timeout(SCHEDULER_STOP_PATIENCE, scheduler.stopped()).await;
        }
        served.map_err(anyhow::Error::from)
    });
    Ok((address, task))
}

/// How a replica catches up and imports.
fn recovery_options(config: &QuarryConfig) -> anyhow::Result<RecoveryOptions> {
    Ok(RecoveryOptions {
        settle: Duration::from_millis(config.retriever.recovery_settle_ms),
        internal_tls: InternalTlsClient::new(&config.internal_tls, &config.cluster)?,
        ..RecoveryOptions::default()
    })
}

/// The placement a role follows, and whether it coordinates.
struct Placed {
    store: Arc<dyn PlacementStore>,
    coordination: Coordination,
}

/// A role's server, where it sits, and what must be finished after it stops serving.
struct BuiltRole {
    role_server: RoleServer,
    shard: u32,
    replica: u32,
    /// A retriever's collections, whose vectors are saved on the way out.
    stored_shard: Option<Arc<ShardCollections>>,
    /// A scheduler replica, which resigns its leadership on the way out.
    scheduler: Option<Arc<SchedulerNode>>,
}

async fn build_role(
    role: Role,
    config: &QuarryConfig,
    discovery: Arc<dyn Discovery>,
    catalog: Arc<dyn CollectionCatalog>,
    placed: Placed,
    address: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<BuiltRole> {
    let limit = config.server.max_message_bytes;
    // This member's certificate for calls to the other roles (`internal_tls`).
    let internal_client = InternalTlsClient::new(&config.internal_tls, &config.cluster)?;
    let mut stored_shard = None;
    let mut scheduler = None;
    let (routes, service_names, shard, replica) = match role {
        Role::Gateway => {
            let clients = Arc::new(
                ClusterClients::new(discovery, limit).with_internal_tls(internal_client.clone()),
            );
            let answers = AnswerCache::from_config(&config.cache, &config.cluster)
                .await
                .map_err(anyhow::Error::msg)?;
            match placed.coordination {
                Coordination::None => {}
                Coordination::Local => {
                    let coordinator =
                        Coordinator::new(Arc::clone(&placed.store), Arc::clone(&clients), None);
                    tokio::spawn(coordinator.run(shutdown.clone()));
                }
                Coordination::Elected(client) => {
                    let election = quarry_kit::election::Election::new(
                        *client,
                        format!("/quarry/{}/placement/coordinator", config.cluster),
                        address,
                        config.discovery.lease_ttl_s,
                    );
                    tokio::spawn(coordinate_while_elected(
                        election,
                        Arc::clone(&placed.store),
                        Arc::clone(&clients),
                        shutdown.clone(),
                    ));
                }
            }
            let gateway = Gateway::new(
                config.gateway.clone(),
                config.cluster.clone(),
                clients,
                catalog,
                Arc::clone(&placed.store),
            )
            .with_answer_cache(answers)
            .with_reranker(&config.rerank)
            .map_err(anyhow::Error::msg)?;
            quarry_gateway::metrics::register();
            // The public API takes smaller requests than the roles take from each other.
            let service = QuarryServer::new(QuarryService::new(Arc::new(gateway)))
                .max_decoding_message_size(config.admission.max_request_bytes.min(limit))
                .max_encoding_message_size(limit);
            let door = crate::front_door::build(config, shutdown).await?;
            (
                Routes::new(FrontDoorLayer(door).layer(service)),
                vec!["quarry.v1.Quarry"],
                0,
                0,
            )
        }
        Role::Analyzer => {
            let encoder = build_encoder(config)?;
            let batching = batch_options(config);
            let caches = quarry_analyzer::CacheOptions {
                entries: config.analyzer.cache_entries,
                embedding_bytes: config.analyzer.embedding_cache_bytes,
                ttl: std::time::Duration::from_secs(config.analyzer.cache_ttl_s),
            };
            let mut analyzer = AnalyzerService::new(encoder, batching)?.with_caches(caches);
            if config.analyzer.backend == "openai" {
                let model = LlmAnalyzer::new(&config.analyzer.chat)
                    .context("analyzer.backend = \"openai\"")?;
                analyzer = analyzer.with_model(Arc::new(model));
            }
            quarry_analyzer::metrics::register();
            let service = AnalyzerServer::new(analyzer)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit);
            (Routes::new(service), vec!["quarry.v1.Analyzer"], 0, 0)
        }
        Role::Retriever => {
            let shard_number = config.retriever.shard;
            let replica_number = config.retriever.replica;
            let placement = placed.store.watch();
            let partitioning = placement.borrow().partitioning;
            if shard_number >= partitioning.count() {
                anyhow::bail!("--shard {shard_number} cannot exist: the cluster has {} partitions, so at most that many shards, numbered from 0", partitioning.count());
            }
            let directory = replica_dir(&config.data_dir, shard_number, replica_number);
            check_partitioning(&directory, partitioning)?;
            let collections = Arc::new(ShardCollections::open(
                &directory,
                shard_number,
                replica_number,
                config.retriever.writer_memory_bytes,
                catalog.watch(),
                placement,
            )?);
            let importer = Arc::new(Importer::new(
                Arc::clone(&collections),
                Arc::clone(&discovery),
                recovery_options(config)?,
            ));
            tokio::spawn(Arc::clone(&collections).follow(shutdown.clone()));
            stored_shard = Some(Arc::clone(&collections));
            quarry_retriever::metrics::register(shard_number, replica_number);
            let retriever = RetrieverService::new(collections)
                .with_importer(importer)
                .with_message_limit(limit);
            let fault = &config.retriever.fault;
            let injects = fault.delay_ms > 0
                && fault.rate > 0.0
                && fault.shard == shard_number
                && fault.replica == replica_number;
            #[cfg(feature = "test-hooks")]
            let retriever = match injects {
                true => retriever.with_fault(InjectedFault::new(
                    Duration::from_millis(fault.delay_ms),
                    fault.rate,
                )),
                false => retriever,
            };
            #[cfg(not(feature = "test-hooks"))]
            if injects {
                anyhow::bail!(
                    "retriever.fault injects delays, a test hook this build does not have \
                     (build with --features test-hooks)"
                );
            }
            // Replies are zstd-compressed for a caller that accepts it: the gateway does for
            // `Fetch` (stored text), not for the small id lists of `Search`.
            let service = RetrieverServer::new(retriever)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
                .send_compressed(CompressionEncoding::Zstd)
                .accept_compressed(CompressionEncoding::Zstd);
            (
                Routes::new(service),
                vec!["quarry.v1.Retriever"],
                shard_number,
                replica_number,
            )
        }
        Role::Generator => {
            let generator = GeneratorService::from_config(&config.generator)
                .with_context(|| format!("generator.backend = {:?}", config.generator.backend))?;
            let service = GeneratorServer::new(generator)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit);
            (Routes::new(service), vec!["quarry.v1.Generator"], 0, 0)
        }
        Role::Evaluator => {
            // The heuristic embeds sentences on a ready analyzer when there is one.
            let channels = RoleChannels::new(discovery).with_internal_tls(internal_client.clone());
            let embedder = AnalyzerEmbedder::new(Arc::new(channels), limit);
            let evaluator = EvaluatorService::from_config(&config.evaluator)
                .with_context(|| format!("evaluator.backend = {:?}", config.evaluator.backend))?
                .with_embedder(Arc::new(embedder));
            let service = EvaluatorServer::new(evaluator)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit);
            (Routes::new(service), vec!["quarry.v1.Evaluator"], 0, 0)
        }
        Role::Scheduler => {
            // The agents reach the other roles the way the gateway does; the node leads
            // (or follows) until shutdown.
            let cluster = Arc::new(
                RoleChannels::new(discovery)
                    .with_tls(config.tls.ca.clone(), config.tls.server_name.clone())
                    .with_internal_tls(internal_client.clone()),
            );
            let node =
                quarry_scheduler::start_node(config, address, Some(cluster), shutdown.clone())
                    .await
                    .context("starting the scheduler")?;
            scheduler = Some(Arc::clone(&node));
            let service = SchedulerServer::new(SchedulerService::new(node))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit);
            (Routes::new(service), vec!["quarry.v1.Scheduler"], 0, 0)
        }
    };
    let tls = match (role, &config.tls.cert, &config.tls.key) {
        (Role::Gateway, Some(cert), Some(key)) => {
            let files = CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            };
            let reload = Duration::from_millis(config.tls.reload_ms);
            Some(ReloadingCert::start(files, reload, shutdown.clone())?.server_config())
        }
        _ => None,
    };
    // The gateway serves the public API; every other role takes calls from members only.
    let internal_tls = match role {
        Role::Gateway => None,
        _ => InternalTlsServer::start(&config.internal_tls, shutdown.clone())?
            .map(|server| (server, config.cluster.clone())),
    };
    let health_address = match (&tls, &internal_tls) {
        (Some(_), _) => config.tls.health_listen.as_ref(),
        (None, Some(_)) => config.internal_tls.health_listen.as_ref(),
        (None, None) => None,
    };
    let health_listener = match health_address {
        Some(address) => Some(quarry_kit::server::bind(address).await?),
        None => None,
    };
    let role_server = RoleServer {
        role: role.as_str(),
        routes,
        service_names,
        shard_replica: (role == Role::Retriever).then_some((shard, replica)),
        tls,
        health_listener,
        internal_tls,
    };
    Ok(BuiltRole {
        role_server,
        shard,
        replica,
        stored_shard,
        scheduler,
    })
}

/// The encoder `analyzer.encoder` names, loaded (`None` for `none`).
pub fn build_encoder(config: &QuarryConfig) -> anyhow::Result<Option<Arc<dyn Encoder>>> {
    Ok(match config.analyzer.encoder {
        EncoderKind::None => None,
        EncoderKind::Hash => Some(Arc::new(HashEncoder::new(HASH_ENCODER_DIMENSIONS))),
        EncoderKind::Onnx => {
            let analyzer = &config.analyzer;
            let options = OnnxOptions {
                model_dir: analyzer.model_dir.clone(),
                runtime_library: analyzer.runtime_library.clone(),
                precision: analyzer.precision,
                threads: analyzer.encoder_threads,
                sessions: batch_options(config).workers,
                spinning: analyzer.encoder_spinning,
            };
            let encoder = OnnxEncoder::load(&options).with_context(|| {
                format!(
                    "analyzer.encoder = \"onnx\" needs all-MiniLM-L6-v2 in {} and ONNX Runtime \
                     at {}: run `make model`, or set analyzer.encoder \
                     (QUARRY_ANALYZER__ENCODER) to \"openai\" or \"none\"",
                    analyzer.model_dir.display(),
                    analyzer.runtime_library.display()
                )
            })?;
            Some(Arc::new(encoder))
        }
        EncoderKind::Openai => Some(Arc::new(
            OpenAiEncoder::new(&config.analyzer.openai).context("analyzer.encoder = \"openai\"")?,
        )),
    })
}

/// The analyzer's batching limits from `[analyzer]`.
pub fn batch_options(config: &QuarryConfig) -> BatchOptions {
    let workers = match config.analyzer.batch_workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        workers => workers,
    };
    BatchOptions {
        workers,
        max_batch: config.analyzer.max_batch,
        window: Duration::from_micros(config.analyzer.batch_window_us),
        max_queued: config.analyzer.embed_queue,
    }
}

/// A replica's documents were routed by its cluster's partitioning (creation shard count and
/// partitions); refuses to serve them under another. A replica of a version before
/// partitions recorded only its shard count: that is the partitioning's creation count, and
/// its data is split into partitions on open.
fn check_partitioning(
    directory: &std::path::Path,
    partitioning: quarry_kit::placement::Partitioning,
) -> anyhow::Result<()> {
    let marker = directory.join("cluster.json");
    std::fs::create_dir_all(directory)?;
    let record = || {
        let bytes = serde_json::to_vec(&serde_json::json!({ "partitioning": partitioning }))?;
        quarry_kit::durable::write_file(&marker, &bytes)?;
        anyhow::Ok(())
    };
    let Ok(text) = std::fs::read_to_string(&marker) else {
        return record();
    };
    let recorded: serde_json::Value = serde_json::from_str(&text)?;
    if let Some(recorded) = recorded.get("partitioning") {
        let recorded: quarry_kit::placement::Partitioning =
            serde_json::from_value(recorded.clone())?;
        if recorded != partitioning {
            anyhow::bail!(
                "the data in {} was partitioned for {} shard(s) x {} (created so); this cluster is {} x {}",
                directory.display(),
                recorded.base_shards,
                recorded.per_shard,
                partitioning.base_shards,
                partitioning.per_shard
            );
        }
        return Ok(());
    }
    let shards = recorded["shards"].as_u64().unwrap_or(0);
    if shards != u64::from(partitioning.base_shards) {
        anyhow::bail!(
            "the data in {} belongs to a cluster created with {shards} shard(s); this cluster was created with {}",
            directory.display(),
            partitioning.base_shards
        );
    }
    record()
}
