//! The scheduler role: durable multi-step agent workflows, each a DAG of steps run by agents
//! that call the cluster's own services.
//!
//! Map: `model` (the stored state and the workflow file format), `validate` (submit checks),
//! `dag` (one workflow's state machine), `dispatch` (which ready steps start, under caps),
//! `attempt` (one attempt of a step: timeout, cancellation),
//! `engine` (the leader's loop: persist, then start), `store` (etcd and file stores),
//! `node` (a replica: lead or forward), `agents`, `templates`
//! (`research_and_write`), `service` (gRPC), `error`.

pub mod agents;
mod attempt;
pub mod dag;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod model;
pub mod node;
pub mod service;
pub mod store;
pub mod templates;
pub mod validate;

use quarry_kit::config::SchedulerConfig;

pub use agents::Agents;
pub use engine::EngineSettings;
pub use error::SchedulerError;
pub use node::SchedulerNode;
pub use service::SchedulerService;

/// The engine's settings from `[scheduler]`.
pub fn engine_settings(config: &SchedulerConfig) -> EngineSettings {
    EngineSettings {
        caps: dispatch::Caps {
            max_running: config.max_running_steps,
            max_running_per_role: config.max_running_per_role,
        },
        retry: dag::RetryPolicy {
            backoff_ms: config.backoff_ms,
            max_backoff_ms: config.max_backoff_ms,
        },
        default_timeout_ms: config.default_step_timeout_ms,
        limits: validate::Limits {
            max_steps: config.max_steps,
            max_step_timeout_ms: config.max_step_timeout_ms,
            max_retries: config.max_retries,
            test_roles: config.test_roles,
        },
    }
}

/// Starts this process's scheduler replica: elected through etcd when `discovery.etcd` is
/// set (workflows in etcd), otherwise alone over a file store under `data_dir/workflows`.
/// `cluster` gives the agents their channels to the other roles.
pub async fn start_node(
    config: &quarry_kit::config::QuarryConfig,
    address: &str,
    cluster: Option<std::sync::Arc<quarry_kit::discovery::RoleChannels>>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<std::sync::Arc<SchedulerNode>, SchedulerError> {
    let limit = config.server.max_message_bytes;
    let agents = std::sync::Arc::new(
        Agents::new(
            cluster,
            limit,
            config.scheduler.test_roles,
            config.data_dir.clone(),
        )
        .with_gateway_key(config.scheduler.gateway_api_key.as_deref()),
    );
    let internal_tls =
        quarry_kit::mtls::InternalTlsClient::new(&config.internal_tls, &config.cluster)
            .map_err(|error| SchedulerError::Internal(error.to_string()))?;
    let options = node::NodeOptions {
        agents,
        settings: engine_settings(&config.scheduler),
        max_message_bytes: limit,
        shutdown,
        internal_tls,
    };
    if config.discovery.etcd.is_empty() {
        let store = store::FileStore::open(&config.data_dir.join("workflows"))?;
        return Ok(SchedulerNode::start_local(
            std::sync::Arc::new(store),
            options,
        ));
    }
    let client = quarry_kit::discovery::EtcdAccess::from_config(&config.discovery)
        .connect()
        .await
        .map_err(|error| SchedulerError::Unavailable(error.to_string()))?;
    Ok(SchedulerNode::start_elected(
        client,
        &config.cluster,
        address,
        config.discovery.lease_ttl_s,
        options,
    ))
}
