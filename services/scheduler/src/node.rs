//! A scheduler replica: leads (runs an engine) or follows. Under `quarry up` it leads alone
//! over a file store; in a cluster it campaigns in the etcd election and, while it leads, runs
//! an engine over the etcd store fenced by its term. A follower forwards Submit, Cancel and
//! Watch to the leader's advertised address and answers Get and List from the store.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use quarry_proto::v1::scheduler_client::SchedulerClient;
use quarry_proto::v1::{
    CancelWorkflowRequest, SubmitWorkflowRequest, WatchWorkflowRequest, Workflow,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::agents::Agents;
use crate::engine::{Engine, EngineHandle, EngineSettings};
use crate::error::SchedulerError;
use crate::model::workflow_is_terminal;
use crate::store::{EtcdStore, WorkflowStore};
use quarry_kit::election::Election;

/// Pause before campaigning again after a term ended.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// A stream of workflow states, the current one first.
pub type WorkflowStream = Pin<Box<dyn Stream<Item = Result<Workflow, tonic::Status>> + Send>>;

/// What every replica runs with.
pub struct NodeOptions {
    pub agents: Arc<Agents>,
    pub settings: EngineSettings,
    pub max_message_bytes: usize,
    /// Stops the replica: a leader resigns, so that a standby takes over at once.
    pub shutdown: CancellationToken,
    /// This replica's certificate, to forward to a leader that takes mutual TLS.
    pub internal_tls: Option<Arc<quarry_kit::mtls::InternalTlsClient>>,
}

pub struct SchedulerNode {
    leading: watch::Receiver<Option<EngineHandle>>,
    election: Option<Election>,
    reader: Arc<dyn WorkflowStore>,
    leader_channels: Mutex<HashMap<String, Channel>>,
    internal_tls: Option<Arc<quarry_kit::mtls::InternalTlsClient>>,
    max_message_bytes: usize,
    /// Cancelled once the replica stopped after `shutdown` (a leader has resigned by then).
    done: CancellationToken,
}

/// Longest workflow id accepted (the scheduler's own are 26 characters).
const MAX_ID_CHARS: usize = 128;

fn invalid_id(id: &str) -> Result<(), SchedulerError> {
    if id.trim().is_empty() {
        return Err(SchedulerError::InvalidArgument(
            "id must not be empty".to_string(),
        ));
    }
    // Never echoed back: an error message travels in a header of bounded size.
    if id.chars().count() > MAX_ID_CHARS
        || !id
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "-_".contains(character))
    {
        return Err(SchedulerError::InvalidArgument(format!(
            "id: not a workflow id (at most {MAX_ID_CHARS} letters, digits, '-' or '_')"
        )));
    }
    Ok(())
}

impl SchedulerNode {
    /// Leads alone over `store` until `shutdown` (restarting its engine if the store fails).
    pub fn start_local(store: Arc<dyn WorkflowStore>, options: NodeOptions) -> Arc<Self> {
        let NodeOptions {
            agents,
            settings,
            max_message_bytes,
            shutdown,
            internal_tls,
        } = options;
        let (leading_sender, leading) = watch::channel(None);
        let engine_store = Arc::clone(&store);
        let done = CancellationToken::new();
        let finished = done.clone();
        tokio::spawn(async move {
            let _finished = finished.drop_guard();
            while !shutdown.is_cancelled() {
                let stop = shutdown.child_token();
                match Engine::start(
                    Arc::clone(&engine_store),
                    Arc::clone(&agents),
                    settings.clone(),
                    stop.clone(),
                )
                .await
                {
                    Ok(handle) => {
                        leading_sender.send_replace(Some(handle.clone()));
                        handle.stopped().await;
                        leading_sender.send_replace(None);
                    }
                    Err(error) => warn!(error = %error, "cannot start the workflow engine"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                }
            }
        });
        Arc::new(Self {
            leading,
            election: None,
            reader: store,
            leader_channels: Mutex::new(HashMap::new()),
            internal_tls,
            max_message_bytes,
            done,
        })
    }

    /// Campaigns in the etcd election of `cluster`; leads while elected, follows otherwise.
    pub fn start_elected(
        client: etcd_client::Client,
        cluster: &str,
        address: &str,
        ttl_seconds: i64,
        options: NodeOptions,
    ) -> Arc<Self> {
        let NodeOptions {
            agents,
            settings,
            max_message_bytes,
            shutdown,
            internal_tls,
        } = options;
        let election = Election::new(
            client.clone(),
            format!("/quarry/{cluster}/scheduler/leader"),
            address,
            ttl_seconds,
        );
        let store = EtcdStore::new(client, cluster);
        let (leading_sender, leading) = watch::channel(None);
        let done = CancellationToken::new();
        let finished = done.clone();
        let campaigning = lead_while_elected(
            election.clone(),
            store.clone(),
            agents,
            settings,
            leading_sender,
            shutdown,
        );
        tokio::spawn(async move {
            let _finished = finished.drop_guard();
            campaigning.await;
        });
        Arc::new(Self {
            leading,
            election: Some(election),
            reader: Arc::new(store),
            leader_channels: Mutex::new(HashMap::new()),
            internal_tls,
            max_message_bytes,
            done,
        })
    }

    fn engine(&self) -> Option<EngineHandle> {
        self.leading.borrow().clone()
    }

    /// Completes once the replica has stopped after its shutdown: a leader has stopped its
    /// engine and resigned, so that a standby can take over at once.
    pub async fn stopped(&self) {
        self.done.cancelled().await
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.leading.borrow().is_some()
    }

    /// Waits until this replica leads (benchmarks, `quarry up`), up to `patience`.
    pub async fn wait_until_leading(&self, patience: Duration) -> bool {
        let mut leading = self.leading.clone();
        tokio::time::timeout(patience, leading.wait_for(|engine| engine.is_some()))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// A client to the leader, for a follower; UNAVAILABLE while nobody (else) leads.
    async fn leader_client(&self) -> Result<SchedulerClient<Channel>, SchedulerError> {
        let Some(election) = &self.election else {
            return Err(SchedulerError::Unavailable(
                "the scheduler is starting; retry".to_string(),
            ));
        };
        let Some(address) = election
            .leader_address()
            .await
            .map_err(|error| SchedulerError::Unavailable(error.to_string()))?
        else {
            return Err(SchedulerError::Unavailable(
                "no scheduler leader is elected".to_string(),
            ));
        };
        if address == election.address() {
            return Err(SchedulerError::Unavailable(
                "this scheduler is taking or giving up the lead; retry".to_string(),
            ));
        }
        let channel = {
            let mut channels = self
                .leader_channels
                .lock()
                .map_err(|_| SchedulerError::Internal("channel cache poisoned".to_string()))?;
            match channels.get(&address) {
                Some(channel) => channel.clone(),
                None => {
                    // The leader's registration is not at hand: a leader takes mutual TLS
                    // when this replica does (replicas move through the modes together).
                    let dialled = match &self.internal_tls {
                        Some(client) => client
                            .endpoint(
                                &address,
                                quarry_kit::discovery::Role::Scheduler,
                                client.mode(),
                            )
                            .map(|endpoint| endpoint.connect_lazy()),
                        None => quarry_kit::server::lazy_channel(&address),
                    };
                    let channel = dialled.map_err(|error| {
                        SchedulerError::Unavailable(format!("leader address {address:?}: {error}"))
                    })?;
                    channels.insert(address.clone(), channel.clone());
                    channel
                }
            }
        };
        Ok(SchedulerClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub async fn submit(&self, request: SubmitWorkflowRequest) -> Result<Workflow, SchedulerError> {
        if let Some(engine) = self.engine() {
            return engine.submit(request).await;
        }
        let mut leader = self.leader_client().await?;
        Ok(leader
            .submit(request)
            .await
            .map_err(SchedulerError::Forwarded)?
            .into_inner())
    }

    pub async fn cancel(&self, id: String) -> Result<Workflow, SchedulerError> {
        invalid_id(&id)?;
        if let Some(engine) = self.engine() {
            return engine.cancel(id).await;
        }
        let mut leader = self.leader_client().await?;
        Ok(leader
            .cancel(CancelWorkflowRequest { id })
            .await
            .map_err(SchedulerError::Forwarded)?
            .into_inner())
    }

    pub async fn get(&self, id: String) -> Result<Workflow, SchedulerError> {
        invalid_id(&id)?;
        if let Some(engine) = self.engine() {
            return engine.get(id).await;
        }
        self.reader
            .load(&id)
            .await?
            .ok_or(SchedulerError::NotFound(id))
    }

    pub async fn list(&self) -> Result<Vec<Workflow>, SchedulerError> {
        if let Some(engine) = self.engine() {
            return engine.list().await;
        }
        self.reader.list().await
    }

    /// The workflow now, then each durable change until it finishes. A stream cut short by a
    /// change of leader ends with UNAVAILABLE; watching again resumes from the current state.
    pub async fn watch(&self, id: String) -> Result<WorkflowStream, SchedulerError> {
        invalid_id(&id)?;
        if let Some(engine) = self.engine() {
            let receiver = engine.watch(id).await?;
            return Ok(stream_of(receiver));
        }
        let mut leader = self.leader_client().await?;
        let events = leader
            .watch(WatchWorkflowRequest { id })
            .await
            .map_err(SchedulerError::Forwarded)?
            .into_inner();
        Ok(Box::pin(events.filter_map(|event| async move {
            match event {
                Ok(event) => event.workflow.map(Ok),
                Err(status) => Some(Err(status)),
            }
        })))
    }
}

/// The engine's states as a stream that ends after a finished workflow, or with
/// UNAVAILABLE when the engine went away first.
fn stream_of(receiver: mpsc::UnboundedReceiver<Workflow>) -> WorkflowStream {
    let stream = futures::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Some(workflow) => {
                let next = if workflow_is_terminal(&workflow) {
                    None
                } else {
                    Some(receiver)
                };
                Some((Ok(workflow), next))
            }
            None => Some((
                Err(tonic::Status::unavailable(
                    "the scheduler leader changed; watch again",
                )),
                None,
            )),
        }
    });
    Box::pin(stream)
}

/// Campaign, lead until the term ends, step down, campaign again — until `shutdown`.
async fn lead_while_elected(
    election: Election,
    store: EtcdStore,
    agents: Arc<Agents>,
    settings: EngineSettings,
    leading: watch::Sender<Option<EngineHandle>>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let term = match election.campaign(&shutdown).await {
            Ok(term) => term,
            Err(error) => {
                if !shutdown.is_cancelled() {
                    warn!(error = %error, "campaign failed; retrying");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_PAUSE) => continue,
                }
            }
        };
        let fenced: Arc<dyn WorkflowStore> =
            Arc::new(store.fenced(term.key.clone(), term.revision));
        let stop = term.lost.child_token();
        match Engine::start(fenced, Arc::clone(&agents), settings.clone(), stop.clone()).await {
            Ok(handle) => {
                leading.send_replace(Some(handle.clone()));
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = handle.stopped() => {}
                }
                leading.send_replace(None);
                stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(2), handle.stopped()).await;
            }
            Err(error) => warn!(error = %error, "cannot load workflows after the election"),
        }
        info!(
            address = election.address(),
            "stepping down as scheduler leader"
        );
        term.resign().await;
        if shutdown.is_cancelled() {
            return;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
